"""Training-input perturbations of the paper's Table 1: none, Gaussian noise, FGSM.

The paper perturbs the TRAINING inputs (Gaussian sigma 0.2, FGSM epsilon 0.2, on [0, 1]
pixels) and measures accuracy on the clean test set. Both perturbations are drawn afresh for
every mini-batch: Gaussian noise from the run's seeded RNG, FGSM against the model as it is at
that step (see docs/experiments.md, "Training-input perturbations", for why).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dipnet.errors import UserError

PredictFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x + N(0, sigma^2)``, clipped to the valid [0, 1] range."""
    return (x + sigma * torch.randn_like(x)).clamp_(0.0, 1.0)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         predict_logits: PredictFn | None = None) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2015): ``clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)``.

    The gradient is taken through ``predict_logits(model, x)`` (the method's deterministic
    prediction; default ``model(x)``) with the model in eval mode, so BatchNorm statistics are
    not touched and no parameter gradient is accumulated. The model's mode is restored.
    """
    predict_logits = predict_logits or (lambda m, inp: m(inp))
    was_training = model.training
    model.eval()
    try:
        x_adv = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(predict_logits(model, x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
    finally:
        model.train(was_training)
    return (x.detach() + eps * grad.sign()).clamp_(0.0, 1.0)


def perturb_batch(kind: str, x: torch.Tensor, y: torch.Tensor, strength: float,
                  model: nn.Module | None = None,
                  predict_logits: PredictFn | None = None) -> torch.Tensor:
    """Apply the training-input perturbation ``kind`` to a batch.

    Args:
        kind: ``"none"``, ``"gaussian"`` or ``"fgsm"``.
        x, y: the batch (x in [0, 1]).
        strength: sigma (gaussian) or epsilon (fgsm).
        model, predict_logits: the model attacked by FGSM and how it predicts.
    Returns:
        The perturbed inputs (``x`` itself for ``"none"``).
    Raises:
        UserError: on an unknown kind, or FGSM without a model.
    """
    if kind == "none" or strength == 0:
        return x
    if kind == "gaussian":
        return gaussian(x, strength)
    if kind == "fgsm":
        if model is None:
            raise UserError("the fgsm training perturbation needs the model being trained.")
        return fgsm(model, x, y, strength, predict_logits)
    raise UserError(f"unknown training perturbation {kind!r}; choose none, gaussian or fgsm.")
