"""The finiteness check of model inputs, shared by `dipnet.predict` and `dipnet.DIPLoss`
(its own module so that neither imports the other)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import numbers

import torch


class PredictInputError(ValueError):
    """`predict` got inputs it cannot use (non-finite values, a dtype the model does not take)."""


class NonFiniteInputError(PredictInputError):
    """The inputs hold NaN or infinite values; the message says how many and where."""


def _float_tensors(inputs: Any, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(inputs, torch.Tensor):
        if inputs.is_floating_point() or inputs.is_complex():
            yield name, inputs
    elif isinstance(inputs, Mapping):
        for key, value in inputs.items():
            # Additive attention masks legitimately hold -inf.
            if "mask" not in str(key).lower():
                yield from _float_tensors(value, f"input {key!r}")
    elif isinstance(inputs, (list, tuple)):
        for i, value in enumerate(inputs):
            yield from _float_tensors(value, f"{name}[{i}]")


def check_count(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int if it is a whole number >= ``minimum`` (not a bool, not a float).

    ``k=1.5`` or ``k=True`` would otherwise reach ``range`` or ``torch.repeat`` as a raw
    TypeError, or silently mean 1.

    Raises:
        ValueError: one line naming ``name``, what was given and what is expected.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}"
                         + (" (0 = the deterministic prediction)" if minimum == 0 else ""))
    return int(value)


def check_finite_inputs(inputs: Any, caller: str = "dipnet.predict") -> None:
    """Refuse NaN / Inf in any floating-point input tensor (mapping entries whose key contains
    "mask" are skipped: additive attention masks hold -inf).

    Raises:
        NonFiniteInputError: naming ``caller``, the count and the first example that holds one.
    """
    for where, t in _float_tensors(inputs, "the input tensor"):
        bad = ~torch.isfinite(t)
        count = int(bad.sum())
        if count:
            first = int(bad.reshape(t.shape[0], -1).any(1).nonzero()[0, 0]) if t.dim() else 0
            raise NonFiniteInputError(
                f"{caller}: {count} non-finite value(s) (NaN or Inf) of {t.numel()} in "
                f"{where}, the first in example {first}; clean or drop those examples first."
            )
