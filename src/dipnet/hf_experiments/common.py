"""Shared pieces of the Hugging Face experiments: baselines (SAM, randomized smoothing), seeds,
atomic result files, summary statistics."""

from __future__ import annotations

import random
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..fileio import atomic_write_json, atomic_write_text
from transformers import Trainer

from ..config import DIPConfig
from ..errors import UserError
from ..experiments.stats import format_mean_std, summarize
from ..inject import project, variance_parameters


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON atomically (temp file + os.replace): a crash never leaves half a file."""
    atomic_write_json(path, data, indent=2, sort_keys=True)


write_text = atomic_write_text


def summary_of(values: Iterable[float | None]) -> dict[str, Any]:
    """`dipnet.experiments.stats.summarize` of the values as a dict (n, mean, sample std, SEM,
    t interval; the spread is NaN for one value, a failed run (None / NaN) is left out), plus
    ``values`` themselves."""
    vals = list(values)
    return {**summarize(vals).to_dict(), "values": vals}


def fmt(values: Iterable[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """'mean ± std' text of the values times ``scale`` (`stats.format_mean_std`: the mean alone
    for one value, '-' for none)."""
    return format_mean_std(summarize(list(values)), scale, digits)


def add_randomized_smoothing(model: nn.Module, sigma: float) -> nn.Module:
    """Randomized smoothing baseline: fixed Gaussian noise N(0, sigma^2) on the embedding output.

    Reuses DIPNet's input projection with a frozen variance (so the noise is the same kind, in
    the same place, but not learned and without a barrier); train the model with a plain
    ``Trainer``. Returns ``model``.
    """
    if not sigma > 0:
        raise UserError(f"randomized smoothing needs sigma > 0, got {sigma}; pass --rs-sigma.")
    project(model, DIPConfig(placement="input", init_variance=sigma ** 2,
                             variance_floor=min(1e-6, sigma ** 2 / 2)))
    for p in variance_parameters(model):
        p.requires_grad_(False)
    return model


class SAMTrainer(Trainer):
    """Sharpness-Aware Minimisation (Foret et al. 2021) inside ``transformers.Trainer``.

    Each step: gradient g at w, move to w + rho * g / ||g||, take the gradient there, move back,
    and let the Trainer's optimizer (AdamW) step with that gradient. Hand-written (about 15 lines)
    because pytorch_optimizer's SAM owns ``step()`` and needs a closure, which the Trainer's
    optimizer step does not pass.

    Args:
        rho: neighbourhood radius (default 0.05, the SAM paper's).
    Raises:
        UserError: with gradient accumulation (SAM's two gradients are per batch).
    """

    def __init__(self, *args: Any, rho: float = 0.05, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise UserError("SAMTrainer needs gradient_accumulation_steps=1 (its two gradients "
                            "are taken per batch); raise the batch size instead.")
        self.rho = rho

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        """One SAM step: two forward/backward passes; returns the loss at the current weights."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        grad_norm = torch.norm(torch.stack([p.grad.detach().norm(2) for p in params]), 2)
        scale = self.rho / (grad_norm + 1e-12)
        eps = []
        with torch.no_grad():
            for p in params:
                e = p.grad * scale
                p.add_(e)
                eps.append(e)
        model.zero_grad(set_to_none=True)
        super().training_step(model, inputs, num_items_in_batch)
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        return loss
