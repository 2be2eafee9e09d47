"""Batches of any shape the models take: their size, and m copies stacked trajectory-major.

A batch is a tensor (passed positionally) or a mapping of keyword inputs (a Hugging Face
tokenizer's output); `dipnet.objective`, `dipnet.trajectories`, `dipnet.monitor` and
`dipnet.predict` all read it through these two functions.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

Batch = torch.Tensor | Mapping[str, Any]


def batch_size_of(inputs: Batch) -> int:
    """The batch size of a tensor or of the first tensor in a mapping.

    Raises:
        ValueError: if there is no tensor to read it from.
    """
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            raise ValueError("inputs must have a batch axis; got a 0-d tensor")
        return inputs.shape[0]
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("inputs hold no tensor with a batch axis")


def repeat_batch(inputs: Any, m: int, batch_size: int | None = None) -> Any:
    """Stack ``m`` copies of a batch along axis 0, trajectory-major: row j*B + i is copy j of i.

    Tensors whose first axis is the batch are repeated; dicts/lists are handled recursively;
    anything else (flags, a scalar tensor) is passed through.
    """
    if m == 1:
        return inputs
    if batch_size is None:
        batch_size = batch_size_of(inputs)
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() > 0 and inputs.shape[0] == batch_size:
            return inputs.repeat(m, *([1] * (inputs.dim() - 1)))
        return inputs
    if isinstance(inputs, Mapping):
        # A plain dict even for a BatchEncoding: the result is only ever splatted into forward().
        return {k: repeat_batch(v, m, batch_size) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(repeat_batch(v, m, batch_size) for v in inputs)
    return inputs
