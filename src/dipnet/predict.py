"""Prediction: one deterministic pass, or the average of k sampled trajectories."""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from dipnet.inject import _mode, get_config, projections, sampling, variance_parameters
from dipnet.objective import (
    BatchTooLargeError,
    _batch_tensors,
    _default_output,
    available_bytes,
    batch_size_of,
    check_copies_fit,
    repeat_batch,
)
from dipnet._util.inputs import (NonFiniteInputError, PredictInputError, check_count,
                                 check_finite_inputs)


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


def average_log_probs(log_ps: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """The Monte Carlo predictive in log space: log of the mean over axis 0 of the trajectories'
    probabilities, from their log-probabilities ``log_ps`` of shape (k, ..., C).

    The one averaging rule of dipnet (`predict`, the evaluation's `Predictor`, the harness's
    `Method.predictive_probs`): probabilities, not logits, are averaged. Computed as
    ``logsumexp(log_ps, 0) - log k``, exact where a probability underflows float32.
    ``count`` (default ``log_ps.shape[0]``) is k when ``log_ps`` holds partial log-sums of
    passes over the trajectories (`predict` runs large k in passes and passes the running
    ``logsumexp`` as one row).
    """
    k = log_ps.shape[0] if count is None else count
    return torch.logsumexp(log_ps, 0) - math.log(k)


def average_probs(logits: torch.Tensor) -> torch.Tensor:
    """Mean over axis 0 of ``softmax(logits)`` for k trajectories' logits of shape (k, ..., C),
    computed in float32 or wider by `average_log_probs`; shape (..., C)."""
    return average_log_probs(torch.log_softmax(_at_least_float32(logits), -1)).exp()


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


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
    check_finite_inputs(inputs)
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


#: A prediction's passes may use at most this fraction of the memory `available_bytes` reports:
#: the log-softmax temporaries, the running average and whatever else runs meanwhile need the
#: rest. A safety margin, not a tuned figure.
MEMORY_FRACTION = 0.25

# Bytes a sampling pass needs per byte of its inputs, measured once per model (`copy_bytes`).
_BYTES_PER_INPUT_BYTE: "weakref.WeakKeyDictionary[nn.Module, float]" = weakref.WeakKeyDictionary()


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def copy_bytes(model: nn.Module, inputs: Any,
               output_fn: Callable[[Any], torch.Tensor] | None = None) -> int:
    """Bytes one copy of the batch ``inputs`` needs in a sampling pass of ``model``.

    Counts the inputs and the output of every module in one forward pass (an upper bound on the
    activations alive at once: a module's output is counted again by its parent). Measured on
    the first call for a model, with the RNG forked (the caller's noise stream is untouched),
    and scaled by the inputs' size afterwards.
    """
    own = _tensor_bytes(_batch_tensors(inputs, batch_size_of(inputs)))
    ratio = _BYTES_PER_INPUT_BYTE.get(model)
    if ratio is None:
        seen = [own]
        handles = [m.register_forward_hook(lambda mod, args, out: seen.__setitem__(
            0, seen[0] + _tensor_bytes(out))) for m in model.modules()]
        tensors = _batch_tensors(inputs, batch_size_of(inputs))
        devices = [t.device.index or 0 for t in tensors[:1] if t.is_cuda]
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), sampling(model):
                raw = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
                seen[0] += _tensor_bytes((output_fn or _default_output)(raw))
        finally:
            for h in handles:
                h.remove()
        ratio = seen[0] / max(own, 1)
        _BYTES_PER_INPUT_BYTE[model] = ratio
    return int(ratio * max(own, 1))


def auto_chunk(model: nn.Module, inputs: Any, k: int,
               output_fn: Callable[[Any], torch.Tensor] | None = None) -> int:
    """Trajectories per pass for ``k`` trajectories of ``inputs``: all k if they fit in
    `MEMORY_FRACTION` of the free memory with their activations (`copy_bytes`), fewer if not
    (at least 1). k where the free memory cannot be told."""
    tensors = _batch_tensors(inputs, batch_size_of(inputs))
    free = available_bytes(tensors[0].device) if tensors else None
    if k <= 1 or free is None:
        return k
    return max(1, min(k, int(free * MEMORY_FRACTION) // max(1, copy_bytes(model, inputs,
                                                                            output_fn))))


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
        chunk: trajectories per forward pass (memory bound); default `auto_chunk`: all at
            once if they fit in memory with their activations, else as many as fit. The
            average is accumulated pass by pass, so without ``keep_samples`` memory does not
            grow with k.
        keep_samples: keep the k trajectories' logits in the result.
        output_fn: picks the logits from the model output.
    Raises:
        ValueError: k not a whole number >= 0, or chunk not one >= 1 (``k=1.5``, ``k=True``).
        NonFiniteInputError: the inputs hold NaN or Inf (count and first example named).
        PredictInputError: a floating-point input whose dtype the model's weights do not have.
        ProjectionShapeError: an input the projections cannot take (integer where floats are
            expected, wrong feature count); the same error for k = 0 and k > 0.
        BatchTooLargeError: ``chunk`` copies of the inputs cannot fit in memory, or the k
            trajectories' logits that ``keep_samples`` keeps cannot.
    """
    if k is None:
        config = get_config(model)
        k = config.k if config is not None else 8
    k = check_count(k, "dipnet.predict: k", 0)
    if chunk is not None:
        chunk = check_count(chunk, "dipnet.predict: chunk", 1)
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
            chunk = chunk or auto_chunk(model, inputs, k, output_fn)
            # Pass by pass: log sum_j p_j and sum_j H[p_j] (memory does not grow with k).
            lse: torch.Tensor | None = None
            ent_sum: torch.Tensor | None = None
            kept: list[torch.Tensor] = []
            done = 0
            while done < k:
                n = min(chunk, k - done)
                logits = mc_logits(model, inputs, n, n, output_fn).float()
                if keep_samples:
                    _check_kept(logits, k, n)
                    kept.append(logits)
                log_ps = torch.log_softmax(logits, -1)  # (n, B, ..., C)
                part, ents = torch.logsumexp(log_ps, 0), _entropy_from_log(log_ps).sum(0)
                lse = part if lse is None else torch.logaddexp(lse, part)
                ent_sum = ents if ent_sum is None else ent_sum + ents
                done += n
            assert lse is not None and ent_sum is not None
            # the one averaging rule, over every pass's trajectories at once
            log_p = average_log_probs(lse.unsqueeze(0), count=k)
            ent = _entropy_from_log(log_p)
            mi = (ent - ent_sum / k).clamp_min(0.0)
            return Prediction(log_p.exp(), log_p, ent, mi,
                              torch.cat(kept, 0) if keep_samples else None)
    finally:
        model.train(was_training)


def _check_kept(first: torch.Tensor, k: int, n: int) -> None:
    # keep_samples holds all k trajectories' logits: refuse before the first pass makes more.
    if n == k:
        return
    need = first.numel() * first.element_size() * k // n
    free = available_bytes(first.device)
    if free is not None and need > free * MEMORY_FRACTION:
        raise BatchTooLargeError(
            f"dipnet.predict: keep_samples=True keeps the logits of k={k} trajectories, "
            f"{need / 1e9:.3g} GB, more than a quarter of the {free / 1e9:.3g} GB available on "
            f"{first.device}; lower k or pass keep_samples=False.")
