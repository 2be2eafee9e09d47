"""Test-time adversarial attacks: FGSM and PGD (L-infinity and L2), with EOT for sampled predictions.

Written here rather than taken from a package:
- torchattacks (3.5.1) pins old dependencies and imports torchvision, which does not import
  beside this project's CPU torch (see ../../../docs/evaluation.md);
- foolbox 3.3.4 / advertorch / cleverhans are unmaintained and attack a fixed model, not the
  expectation over a stochastic prediction's noise;
- adversarial-robustness-toolbox pulls a large dependency tree for two short loops.
The loops below are the standard ones (Goodfellow et al. 2015; Madry et al. 2018, step size
2.5 * eps / steps, uniform random start) and are checked in the tests against the closed-form
worst case of linear models.

Stochastic predictions are attacked with expectation over transformation (EOT, Athalye et al.
2018): every gradient step draws ``eot_samples`` fresh trajectories and follows the gradient of
the loss of their averaged prediction, -log mean_j softmax(f(x; eps_j))_y, i.e. the gradient
averaged over the noise of exactly the quantity the sampled prediction thresholds. Accuracy is
then measured on the final iterate with fresh, independent noise (k trajectories).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .predictors import Predictor

NORMS = ("linf", "l2")
ATTACKS = ("fgsm", "pgd")
Bounds = tuple[float, float] | None


def _check(norm: str, eps: float) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t`` (B, 1, 1, ...)."""
    n = t.flatten(1).norm(dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


LOSSES = ("ce", "margin")


def _margin(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} s_j - s_y per row (positive = misclassified)."""
    true = scores.gather(1, y[:, None])[:, 0]
    other = scores.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def attack_loss(predictor: Predictor, x: torch.Tensor, y: torch.Tensor,
                eot_samples: int | None = None, loss: str = "ce") -> torch.Tensor:
    """Summed (over the batch) loss the attacker ascends.

    ``"ce"``: cross-entropy. ``"margin"``: the Carlini-Wagner margin max_{j != y} s_j - s_y,
    which follows whichever wrong class is closest and so finds points that cross-entropy
    (pulled towards a mix of classes) misses. Scores s are logits for a deterministic
    predictor and, for a stochastic one, the log of the prediction averaged over
    ``eot_samples`` fresh trajectories (default: the predictor's k).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if predictor.stochastic:
        scores = predictor.log_probs(x, eot_samples or predictor.k)
    else:
        scores = predictor.logits_fn(x).float()
    if loss == "margin":
        return _margin(scores, y).sum()
    if predictor.stochastic:
        return F.nll_loss(scores, y, reduction="sum")
    return F.cross_entropy(scores, y, reduction="sum")


def _grad(predictor: Predictor, x: torch.Tensor, y: torch.Tensor,
          eot_samples: int | None, loss_name: str = "ce") -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = attack_loss(predictor, x, y, eot_samples, loss_name)
    (g,) = torch.autograd.grad(loss, x)
    return g.detach()


def _step(g: torch.Tensor, norm: str, size: float) -> torch.Tensor:
    if norm == "linf":
        return size * g.sign()
    return size * g / _flat_norm(g).clamp_min(1e-12)


def _project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def _clip(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    return x if bounds is None else x.clamp(bounds[0], bounds[1])


def fgsm(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
         bounds: Bounds = (0.0, 1.0), eot_samples: int | None = None) -> torch.Tensor:
    """One gradient-sign (L-inf) or normalised-gradient (L2, "fast gradient method") step.

    Args:
        predictor: the prediction to attack (EOT gradient if stochastic).
        x, y: a batch of inputs and labels.
        eps: perturbation budget in the given norm.
        norm: ``"linf"`` or ``"l2"``.
        bounds: valid input range to clip to, or None for no clipping.
        eot_samples: trajectories per gradient for a stochastic predictor (default k).
    Returns:
        the adversarial batch, same shape as ``x``, detached.
    Raises:
        ValueError: on an unknown norm or a negative eps.
    """
    _check(norm, eps)
    if eps == 0:
        return x.detach().clone()
    g = _grad(predictor, x, y, eot_samples)
    return _clip(x + _project(_step(g, norm, eps), norm, eps), bounds).detach()


def _random_start(x: torch.Tensor, norm: str, eps: float, gen: torch.Generator | None) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=gen, device=x.device, dtype=x.dtype)
    return d / _flat_norm(d).clamp_min(1e-12) * eps * r


@torch.no_grad()
def _correct(predictor: Predictor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return predictor.log_probs(x).argmax(-1) == y


def pgd(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
        steps: int = 20, step_size: float | None = None, random_start: bool = True,
        restarts: int = 1, bounds: Bounds = (0.0, 1.0), eot_samples: int | None = None,
        generator: torch.Generator | None = None, losses: Sequence[str] = ("ce",)) -> torch.Tensor:
    """Projected gradient descent on the loss (ascent), with random start and restarts.

    Each restart runs once per loss in ``losses`` (``"ce"``, ``"margin"``); a point counts as
    broken if any run breaks it (the AutoAttack idea of an ensemble of losses, without its
    step-size schedule).

    For a deterministic predictor every iterate is checked and the first one that is
    misclassified is kept (any point inside the ball is a valid adversarial example, so this is
    the attack's success over its whole path). For a stochastic predictor that check would be
    decided by one noise draw and then re-used for scoring, which favours the attacker by
    chance; instead the final iterate of each restart is scored with a fresh k-sample loss, the
    highest-loss restart is kept, and the caller scores it with yet another fresh draw.

    Args:
        predictor: the prediction to attack.
        x, y: a batch of inputs and labels.
        eps: budget in ``norm``.
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps per restart (>= 1).
        step_size: default 2.5 * eps / steps (Madry et al. 2018).
        random_start: start uniformly inside the ball (else at x).
        restarts: independent starts (>= 1).
        bounds: valid input range, or None.
        eot_samples: trajectories per gradient step for a stochastic predictor (default k).
        generator: RNG for the random starts.
        losses: the losses to ascend, one run each per restart.
    Returns:
        the adversarial batch, detached.
    Raises:
        ValueError: on bad arguments.
    """
    _check(norm, eps)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    bad = [name for name in losses if name not in LOSSES] or ([] if losses else ["(none)"])
    if bad:
        raise ValueError(f"losses must be a non-empty subset of {LOSSES}, got {list(losses)}")
    if eps == 0:
        return x.detach().clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    x = x.detach()
    best = x.clone()
    if predictor.stochastic:
        best_loss = torch.full((x.shape[0],), -math.inf, device=x.device)
    else:
        broken = ~_correct(predictor, x, y)
    for _, loss_name in [(r, name) for r in range(restarts) for name in losses]:
        delta = _random_start(x, norm, eps, generator) if random_start else torch.zeros_like(x)
        delta = _clip(x + delta, bounds) - x
        for _ in range(steps):
            g = _grad(predictor, x + delta, y, eot_samples, loss_name)
            delta = _project(delta + _step(g, norm, alpha), norm, eps)
            delta = _clip(x + delta, bounds) - x
            if not predictor.stochastic:
                adv = x + delta
                newly = ~broken & ~_correct(predictor, adv, y)
                best[newly] = adv[newly]
                broken |= newly
                if bool(broken.all()):
                    return best
        adv = (x + delta).detach()
        if predictor.stochastic:
            with torch.no_grad():
                loss = F.nll_loss(predictor.log_probs(adv), y, reduction="none")
            better = loss > best_loss
            best[better] = adv[better]
            best_loss = torch.where(better, loss, best_loss)
        else:
            # Points never broken keep the last iterate (the highest-loss point found).
            keep = ~broken
            best[keep] = adv[keep]
    return best


def run_attack(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, attack: str, norm: str,
               eps: float, batch_size: int = 500, **kwargs) -> torch.Tensor:
    """Per-example robust-correctness mask (N,) of ``attack`` at ``eps``, in batches.

    Args:
        attack: ``"fgsm"`` or ``"pgd"``; remaining keyword arguments go to it.
    Returns:
        bool tensor: True where the prediction on the adversarial input is still correct
        (scored with fresh noise for a stochastic predictor).
    Raises:
        ValueError: on an unknown attack.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    fn = fgsm if attack == "fgsm" else pgd
    if attack == "fgsm":
        kwargs = {k: v for k, v in kwargs.items() if k in ("bounds", "eot_samples")}
        # FGSM is the classic one-step cross-entropy attack.
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = fn(predictor, xb, yb, eps, norm, **kwargs)
        out.append(_correct(predictor, adv, yb))
    return torch.cat(out)


def robust_accuracy_curve(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, attack: str,
                          norm: str, epsilons: Sequence[float], cumulative: bool = True,
                          progress: bool = False, **kwargs) -> list[dict]:
    """Accuracy under ``attack`` for each epsilon.

    With ``cumulative`` (deterministic predictors only), an example broken at a smaller epsilon
    counts as broken at every larger one: the adversarial input found there lies inside the
    larger ball too, so this is still a valid (and stronger) attack, and the curve is
    non-increasing by construction. For a stochastic predictor each epsilon is scored on its own,
    with fresh noise.

    Returns:
        one dict per epsilon: ``{attack, norm, eps, prediction, accuracy, n_points, steps,
        eot_samples}`` (steps 1 for FGSM; eot_samples null for a deterministic prediction).
    """
    epsilons = sorted(float(e) for e in epsilons)
    still = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    results = []
    eps_iter: Iterable[float] = epsilons
    if progress:
        eps_iter = tqdm(epsilons, desc=f"{attack}-{norm} ({predictor.name})", leave=False)
    for eps in eps_iter:
        ok = run_attack(predictor, x, y, attack, norm, eps, **kwargs)
        if cumulative and not predictor.stochastic:
            still = still & ok
            ok = still
        eot = (kwargs.get("eot_samples") or predictor.k) if predictor.stochastic else None
        results.append({
            "attack": attack, "norm": norm, "eps": eps, "prediction": predictor.name,
            "accuracy": ok.float().mean().item(), "n_points": int(x.shape[0]),
            "steps": 1 if attack == "fgsm" else int(kwargs.get("steps", 20)),
            "restarts": 1 if attack == "fgsm" else int(kwargs.get("restarts", 1)),
            "eot_samples": eot,
            "losses": ["ce"] if attack == "fgsm" else list(kwargs.get("losses", ("ce",))),
        })
    return results
