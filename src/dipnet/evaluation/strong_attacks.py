"""AutoAttack-style strong attacks from the Adversarial Robustness Toolbox (ART).

Three attacks of AutoAttack (Croce & Hein 2020), taken from ART 1.20.1 rather than written here:

- ``apgd-ce``: Auto-PGD on the cross-entropy (`AutoProjectedGradientDescent`,
  ``loss_type="cross_entropy"``): PGD with momentum and a step size that halves when progress
  stalls, starting at 2 eps, so no step size needs tuning;
- ``apgd-dlr``: the same on the difference-of-logits-ratio loss
  -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), invariant to shifting and rescaling the logits
  (it needs at least 3 classes);
- ``square``: the gradient-free Square attack (`SquareAttack`, random square-shaped updates
  accepted when they lower the margin; images only). It needs no gradient, so a prediction
  that looks robust to the gradient attacks only because its gradients are noisy or useless
  (gradient masking) is broken by Square.

How a prediction is shown to ART (`PredictionModule`): a deterministic prediction as its
logits; a stochastic (sampled) prediction as the log of its EOT-averaged probabilities,
log mean_j softmax(f(x; eps_j)) over ``eot_samples`` fresh trajectories per call. Those are
logits of the averaged prediction (their softmax is the averaged probability vector), so ART's
cross-entropy is the EOT loss of `dipnet.evaluation.attacks`, its gradient is the EOT gradient,
DLR is computed on the averaged prediction, and every query Square makes is a fresh k-sample
prediction. As for the other attacks, the adversarial inputs are finally scored with fresh
noise (k trajectories), and deterministic curves are cumulative over eps.

ART works on numpy arrays and draws its random starts and squares from numpy's global RNG;
`strong_attack` seeds it and restores it afterwards.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dipnet.evaluation.attacks import Bounds, _check, _correct, accuracy_curve, clean_correct
from dipnet.evaluation.predictors import Predictor
from dipnet.evaluation.settings import STRONG_ATTACKS

_LOSSES = {"apgd-ce": ["ce"], "apgd-dlr": ["dlr"], "square": ["margin"]}


class PredictionModule(nn.Module):
    """A `Predictor` as the ``nn.Module`` ART expects: x -> scores (N, C).

    Deterministic: the logits. Stochastic: log mean_j softmax(f(x; eps_j)) over
    ``eot_samples`` fresh trajectories (default the predictor's k), differentiable (EOT).
    The model behind the predictor stays in whatever mode the predictor set (eval): this
    module holds no parameters, so ART's ``.train()`` / ``.eval()`` calls do not reach it.
    """

    def __init__(self, predictor: Predictor, eot_samples: int | None = None) -> None:
        super().__init__()
        self.predictor = predictor
        self.eot_samples = eot_samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.predictor.stochastic:
            return self.predictor.log_probs(x, self.eot_samples or self.predictor.k)
        return self.predictor.logits_fn(x).float()


def art_classifier(predictor: Predictor, input_shape: Sequence[int], num_classes: int,
                   bounds: Bounds, eot_samples: int | None = None,
                   device: torch.device | None = None) -> Any:
    """An ART ``PyTorchClassifier`` around ``predictor`` (see `PredictionModule`).

    Args:
        input_shape: shape of one example.
        num_classes: number of classes.
        bounds: valid input range, or None (then a float32-wide range: nothing is clipped).
        eot_samples: trajectories per call for a stochastic prediction (default k).
        device: where the predictor's model lives (default cpu).
    Returns:
        the classifier.
    """
    from art.estimators.classification import PyTorchClassifier

    if bounds is None:
        info = np.finfo(np.float32)
        bounds = (float(info.min), float(info.max))
    on_gpu = device is not None and torch.device(device).type == "cuda"
    return PyTorchClassifier(model=PredictionModule(predictor, eot_samples),
                             loss=nn.CrossEntropyLoss(), input_shape=tuple(input_shape),
                             nb_classes=int(num_classes), clip_values=tuple(bounds),
                             device_type="gpu" if on_gpu else "cpu")


def strong_attack(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, attack: str, norm: str,
                  eps: float, *, num_classes: int, bounds: Bounds = (0.0, 1.0), steps: int = 100,
                  queries: int = 1000, eot_samples: int | None = None, batch_size: int = 500,
                  seed: int = 0) -> torch.Tensor:
    """Adversarial inputs from one ART attack at ``eps`` (same shape and device as ``x``).

    Args:
        attack: ``"apgd-ce"``, ``"apgd-dlr"`` or ``"square"``.
        norm: ``"linf"`` or ``"l2"``.
        num_classes: number of classes (APGD-DLR needs >= 3).
        steps: APGD iterations (AutoAttack: 100); one random start.
        queries: Square iterations (AutoAttack: 5000).
        eot_samples: trajectories per query of a stochastic prediction (default k).
        batch_size: rows per ART batch.
        seed: numpy seed for ART's random starts and squares (numpy's state is restored).
    Raises:
        ValueError: unknown attack or norm, negative eps, DLR with < 3 classes, Square on
            inputs that are not images (C, H, W).
    """
    _check(norm, eps)
    if attack not in STRONG_ATTACKS:
        raise ValueError(f"attack must be one of {STRONG_ATTACKS}, got {attack!r}")
    if attack == "apgd-dlr" and num_classes < 3:
        raise ValueError(f"apgd-dlr needs at least 3 classes, got {num_classes}")
    if attack == "square" and x.dim() != 4:
        raise ValueError(f"square needs images (N, C, H, W), got shape {tuple(x.shape)}")
    if eps == 0 or x.shape[0] == 0:
        return x.detach().clone()
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

    clf = art_classifier(predictor, tuple(x.shape[1:]), num_classes, bounds, eot_samples, x.device)
    art_norm: Any = np.inf if norm == "linf" else 2
    if attack == "square":
        art_attack = SquareAttack(clf, norm=art_norm, eps=eps, max_iter=queries, nb_restarts=1,
                                  batch_size=batch_size, verbose=False)
    else:
        art_attack = AutoProjectedGradientDescent(
            clf, norm=art_norm, eps=eps, eps_step=2 * eps, max_iter=steps, nb_random_init=1,
            batch_size=batch_size, verbose=False,
            loss_type="cross_entropy" if attack == "apgd-ce" else "difference_logits_ratio")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        adv = art_attack.generate(x.detach().cpu().numpy().astype(np.float32),
                                  y.detach().cpu().numpy())
    finally:
        np.random.set_state(state)
    return torch.from_numpy(np.ascontiguousarray(adv)).to(device=x.device, dtype=x.dtype)


def strong_accuracy_curve(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, attack: str,
                          norm: str, epsilons: Sequence[float], *, num_classes: int,
                          bounds: Bounds = (0.0, 1.0), steps: int = 100, queries: int = 1000,
                          eot_samples: int | None = None, batch_size: int = 500, seed: int = 0,
                          clean_log_probs: torch.Tensor | None = None, cumulative: bool = True,
                          progress: bool = False) -> list[dict]:
    """Accuracy under an ART attack for each epsilon, rows like `attacks.robust_accuracy_curve`.

    Deterministic predictions are cumulative (a point broken at a smaller eps stays broken and
    is not attacked again); stochastic ones are attacked at every eps and scored with fresh
    noise. ``clean_log_probs`` (N, C), if given, is the prediction at ``x`` (the eps = 0 row).

    Returns:
        one dict per eps: ``{attack, norm, eps, prediction, accuracy, n_points, steps,
        restarts, eot_samples, losses}`` (``steps`` is the number of queries for Square).
    Raises:
        ValueError: as `strong_attack`.
    """
    epsilons = sorted(float(e) for e in epsilons)
    clean_ok = clean_correct(predictor, x, y, batch_size, clean_log_probs)
    eot = (eot_samples or predictor.k) if predictor.stochastic else None

    def score(eps: float, still: torch.Tensor | None) -> torch.Tensor:
        attacked = still if still is not None else torch.ones_like(clean_ok)
        ok = torch.zeros_like(clean_ok)
        idx = attacked.nonzero().squeeze(1)
        if idx.numel():
            adv = strong_attack(predictor, x[idx], y[idx], attack, norm, eps,
                                num_classes=num_classes, bounds=bounds, steps=steps,
                                queries=queries, eot_samples=eot_samples,
                                batch_size=batch_size, seed=seed)
            ok[idx] = torch.cat([_correct(predictor, adv[i:i + batch_size], y[idx][i:i + batch_size])
                                 for i in range(0, idx.numel(), batch_size)])
        return ok

    return [{
        "attack": attack, "norm": norm, "eps": eps, "prediction": predictor.name,
        "accuracy": ok.float().mean().item(), "n_points": int(x.shape[0]),
        "steps": queries if attack == "square" else steps, "restarts": 1,
        "eot_samples": eot, "losses": list(_LOSSES[attack]),
    } for eps, ok in accuracy_curve(predictor, epsilons, clean_ok, score, cumulative=cumulative,
                                    progress=f"{attack}-{norm}" if progress else None)]
