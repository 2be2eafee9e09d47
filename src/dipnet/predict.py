"""Prediction: one deterministic pass, or the average of k sampled trajectories."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .inject import get_config, sampling
from .objective import _default_output, batch_size_of, repeat_batch


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


def _entropy_from_log(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).sum(-1)


def mc_logits(model: nn.Module, inputs: Any, k: int, chunk: int | None = None,
              output_fn: Callable[[Any], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits of k sampled trajectories, shape (k, B, ...); differentiable (for EOT attacks).

    The k copies are stacked on the batch axis and run in passes of at most ``chunk``
    trajectories each (default: all k in one pass). Projections sample whatever the mode.
    """
    output_fn = output_fn or _default_output
    b = batch_size_of(inputs)
    chunk = chunk or k
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
    """
    if k is None:
        config = get_config(model)
        k = config.k if config is not None else 8
    if k < 0:
        raise ValueError(f"k must be >= 0 (0 = deterministic), got {k}")
    output_fn = output_fn or _default_output
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if k == 0:
                raw = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
                logits = output_fn(raw).float()
                log_p = torch.log_softmax(logits, -1)
                ent = _entropy_from_log(log_p)
                return Prediction(log_p.exp(), log_p, ent, torch.zeros_like(ent),
                                  logits.unsqueeze(0) if keep_samples else None)
            logits = mc_logits(model, inputs, k, chunk, output_fn).float()
            log_ps = torch.log_softmax(logits, -1)  # (k, B, ..., C)
            log_p = torch.logsumexp(log_ps, 0) - math.log(k)
            ent = _entropy_from_log(log_p)
            mean_ent = _entropy_from_log(log_ps).mean(0)
            mi = (ent - mean_ent).clamp_min(0.0)
            return Prediction(log_p.exp(), log_p, ent, mi, logits if keep_samples else None)
    finally:
        model.train(was_training)
