"""Prediction: one deterministic pass, or the average of k sampled trajectories."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .inject import _mode, get_config, projections, sampling, variance_parameters
from .objective import _default_output, batch_size_of, check_copies_fit, repeat_batch


class PredictInputError(ValueError):
    """`predict` got inputs it cannot use (non-finite values, a dtype the model does not take)."""


class NonFiniteInputError(PredictInputError):
    """The inputs hold NaN or infinite values; the message says how many and where."""


@dataclass
class Prediction:
    """A (possibly Monte Carlo) prediction for a batch.

    Attributes:
        probs: predictive probabilities, mean of the k trajectories' softmax, shape (B, ..., C).
        log_probs: log of ``probs`` (the predictive log-likelihood uses these).
        entropy: predictive entropy H[mean p], shape (B, ...).
        mutual_information: H[mean p] - mean H[p] (epistemic part; 0 for k = 1), shape (B, ...).
        samples: the k trajectories' logits, shape (k, B, ..., C), or None if not kept.
    """

    probs: torch.Tensor
    log_probs: torch.Tensor
    entropy: torch.Tensor
    mutual_information: torch.Tensor
    samples: torch.Tensor | None = None

    @property
    def labels(self) -> torch.Tensor:
        """Arg-max class per example."""
        return self.probs.argmax(-1)


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis from log-probabilities ``log_p``, shape ``log_p.shape[:-1]``.

    The xlogy convention 0 * log 0 = 0: a class masked with a -inf logit has p = 0 and adds
    nothing (exp(-inf) * -inf would be NaN). The one definition (`predict` and the evaluation).
    """
    terms = torch.where(torch.isneginf(log_p), torch.zeros_like(log_p), log_p.exp() * log_p)
    return -terms.sum(-1)


_entropy_from_log = entropy  # the name `predict` calls it by


def average_log_probs(log_ps: torch.Tensor) -> torch.Tensor:
    """The Monte Carlo predictive in log space: log of the mean over axis 0 of the trajectories'
    probabilities, from their log-probabilities ``log_ps`` of shape (k, ..., C).

    The one averaging rule of dipnet (`predict`, the evaluation's `Predictor`, the harness's
    `Method.predictive_probs`): probabilities, not logits, are averaged. Computed as
    ``logsumexp(log_ps, 0) - log k``, exact where a probability underflows float32.
    """
    return torch.logsumexp(log_ps, 0) - math.log(log_ps.shape[0])


def average_probs(logits: torch.Tensor) -> torch.Tensor:
    """Mean over axis 0 of ``softmax(logits)`` for k trajectories' logits of shape (k, ..., C),
    computed in float32 or wider by `average_log_probs`; shape (..., C)."""
    return average_log_probs(torch.log_softmax(_at_least_float32(logits), -1)).exp()


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


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


def check_inputs(model: nn.Module, inputs: Any) -> None:
    """Refuse inputs that would give a silently wrong or a raw-torch-error prediction.

    Checks every floating-point input tensor (mapping entries whose key contains "mask" are
    skipped) for NaN / Inf, and a plain tensor input's dtype against the model's weights (unless
    autocast is on). Shape and integer-vs-float problems are reported by the projections
    themselves, the same way for k = 0 and k > 0.

    Raises:
        NonFiniteInputError: NaN or Inf values; the message gives their count and the first
            example that holds one.
        PredictInputError: a floating-point dtype the model's weights do not have.
    """
    for where, t in _float_tensors(inputs, "the input tensor"):
        bad = ~torch.isfinite(t)
        count = int(bad.sum())
        if count:
            first = int(bad.reshape(t.shape[0], -1).any(1).nonzero()[0, 0]) if t.dim() else 0
            raise NonFiniteInputError(
                f"dipnet.predict: {count} non-finite value(s) (NaN or Inf) of {t.numel()} in "
                f"{where}, the first in example {first}; clean or drop those examples first."
            )
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        if torch.is_autocast_enabled(inputs.device.type):
            return
        skip = {id(p) for p in variance_parameters(model)}
        dtypes = {p.dtype for p in model.parameters()
                  if p.is_floating_point() and id(p) not in skip}
        if dtypes and inputs.dtype not in dtypes:
            want = sorted(str(d).replace("torch.", "") for d in dtypes)
            raise PredictInputError(
                f"dipnet.predict: the input is {str(inputs.dtype).replace('torch.', '')} but "
                f"the model's weights are {', '.join(want)}; convert it first, e.g. "
                f"inputs.to(torch.{want[0]})."
            )


def mc_logits(model: nn.Module, inputs: Any, k: int, chunk: int | None = None,
              output_fn: Callable[[Any], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits of k sampled trajectories, shape (k, B, ...); differentiable (for EOT attacks).

    The k copies are stacked on the batch axis and run in passes of at most ``chunk``
    trajectories each (default: all k in one pass). Projections sample whatever the mode.
    """
    output_fn = output_fn or _default_output
    b = batch_size_of(inputs)
    chunk = chunk or k
    check_copies_fit(inputs, min(chunk, k), f"Monte Carlo prediction with k={k}",
                     "pass chunk= (trajectories per forward pass) or lower k")
    outs = []
    with sampling(model):
        done = 0
        while done < k:
            n = min(chunk, k - done)
            stacked = repeat_batch(inputs, n, b)
            raw = model(**stacked) if isinstance(stacked, Mapping) else model(stacked)
            out = output_fn(raw)
            outs.append(out.reshape(n, b, *out.shape[1:]))
            done += n
    return torch.cat(outs, 0)


def predict(model: nn.Module, inputs: Any, k: int | None = 0, chunk: int | None = None,
            keep_samples: bool = False,
            output_fn: Callable[[Any], torch.Tensor] | None = None) -> Prediction:
    """Predict with a projected model, deterministically (k = 0) or by averaging k samples.

    Probabilities (not logits) are averaged: p = mean_j softmax(f(x; eps_j)). Runs under
    ``torch.no_grad()`` and in eval mode (BatchNorm uses running statistics); the model's
    train/eval mode is restored afterwards.

    Args:
        model: a projected model.
        inputs: a tensor or a mapping of keyword inputs.
        k: 0 for the deterministic pass (projections off), >= 1 for Monte Carlo with k
            trajectories; None uses the config's k.
        chunk: trajectories per forward pass (memory bound); default all at once.
        keep_samples: keep the k trajectories' logits in the result.
        output_fn: picks the logits from the model output.
    Raises:
        ValueError: if k < 0.
        NonFiniteInputError: the inputs hold NaN or Inf (count and first example named).
        PredictInputError: a floating-point input whose dtype the model's weights do not have.
        ProjectionShapeError: an input the projections cannot take (integer where floats are
            expected, wrong feature count); the same error for k = 0 and k > 0.
        BatchTooLargeError: k (or chunk) copies of the inputs cannot fit in memory.
    """
    if k is None:
        config = get_config(model)
        k = config.k if config is not None else 8
    if k < 0:
        raise ValueError(f"k must be >= 0 (0 = deterministic), got {k}")
    check_inputs(model, inputs)
    output_fn = output_fn or _default_output
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if k == 0:
                # Projections in "check" mode: no noise, but the same input validation as a
                # sampling pass, so a bad input gives the same error for every k.
                checked = _mode(model, "check") if projections(model) else \
                    contextlib.nullcontext()
                with checked:
                    raw = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
                logits = output_fn(raw).float()
                log_p = torch.log_softmax(logits, -1)
                ent = _entropy_from_log(log_p)
                return Prediction(log_p.exp(), log_p, ent, torch.zeros_like(ent),
                                  logits.unsqueeze(0) if keep_samples else None)
            logits = mc_logits(model, inputs, k, chunk, output_fn).float()
            log_ps = torch.log_softmax(logits, -1)  # (k, B, ..., C)
            log_p = average_log_probs(log_ps)
            ent = _entropy_from_log(log_p)
            mean_ent = _entropy_from_log(log_ps).mean(0)
            mi = (ent - mean_ent).clamp_min(0.0)
            return Prediction(log_p.exp(), log_p, ent, mi, logits if keep_samples else None)
    finally:
        model.train(was_training)
