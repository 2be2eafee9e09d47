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
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dipnet.evaluation.predictors import Predictor
from dipnet.evaluation.settings import GRADIENT_ATTACKS

NORMS = ("linf", "l2")
ATTACKS = GRADIENT_ATTACKS  # the registry's white-box attacks (dipnet.evaluation.settings)
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
    return _scores_loss(scores, y, loss, predictor.stochastic)


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


def _correct_batched(predictor: Predictor, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int) -> torch.Tensor:
    return torch.cat([_correct(predictor, x[i:i + batch_size], y[i:i + batch_size])
                      for i in range(0, x.shape[0], batch_size)])


def _scores_loss(scores: torch.Tensor, y: torch.Tensor, loss: str, stochastic: bool) -> torch.Tensor:
    """The summed attack loss of `attack_loss` from scores (logits, or EOT log-probabilities)."""
    if loss == "margin":
        return _margin(scores, y).sum()
    if stochastic:
        return F.nll_loss(scores, y, reduction="sum")
    return F.cross_entropy(scores, y, reduction="sum")


def pgd(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
        steps: int = 20, step_size: float | None = None, random_start: bool = True,
        restarts: int = 1, bounds: Bounds = (0.0, 1.0), eot_samples: int | None = None,
        generator: torch.Generator | None = None, losses: Sequence[str] = ("ce",),
        clean_correct: torch.Tensor | None = None, skip: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient descent on the loss (ascent), with random start and restarts.

    Each restart runs once per loss in ``losses`` (``"ce"``, ``"margin"``); a point counts as
    broken if any run breaks it (the AutoAttack idea of an ensemble of losses, without its
    step-size schedule).

    For a deterministic predictor every iterate is checked and the first one that is
    misclassified is kept (any point inside the ball is a valid adversarial example, so this is
    the attack's success over its whole path). The check reuses the forward pass of the next
    gradient step, and a broken point leaves the batch: later steps cost only the points still
    standing (rows of a deterministic prediction are independent, so the survivors' paths are
    those of the full batch; random starts are drawn for the full batch, so they are too).
    For a stochastic predictor that check would be decided by one noise draw and then re-used
    for scoring, which favours the attacker by chance; instead the final iterate of each run is
    scored with a fresh k-sample loss, the highest-loss run is kept (with a single run there
    is nothing to choose and no scoring pass), and the caller scores it with yet another draw.

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
        clean_correct: (B,) whether the deterministic prediction is correct at ``x``, if the
            caller knows it (saves a forward pass); ignored for a stochastic predictor.
        skip: (B,) rows not to attack (deterministic only; e.g. broken at a smaller eps);
            they are returned unchanged.
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
    if skip is not None and predictor.stochastic:
        raise ValueError("skip applies to deterministic predictors only (a stochastic "
                         "prediction is scored afresh at every eps)")
    if eps == 0:
        return x.detach().clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    x = x.detach()
    runs = [name for _ in range(restarts) for name in losses]
    if not predictor.stochastic:
        if clean_correct is None:
            clean_correct = _correct(predictor, x, y)
        active = clean_correct if skip is None else clean_correct & ~skip
        return _pgd_deterministic(predictor, x, y, eps, norm, steps, alpha, random_start, runs,
                                  bounds, generator, active)
    return _pgd_stochastic(predictor, x, y, eps, norm, steps, alpha, random_start, runs, bounds,
                           generator, eot_samples)


def _pgd_stochastic(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float,
                    norm: str, steps: int, alpha: float, random_start: bool, runs: list[str],
                    bounds: Bounds, generator: torch.Generator | None,
                    eot_samples: int | None) -> torch.Tensor:
    """`pgd` of a stochastic predictor: each run's final iterate, scored with a fresh k-sample
    loss; the highest-loss run per point is kept (the only run, unscored, if there is one)."""
    best = x.clone()
    best_loss = torch.full((x.shape[0],), -math.inf, device=x.device)
    for loss_name in runs:
        delta = _random_start(x, norm, eps, generator) if random_start else torch.zeros_like(x)
        delta = _clip(x + delta, bounds) - x
        for _ in range(steps):
            g = _grad(predictor, x + delta, y, eot_samples, loss_name)
            delta = _project(delta + _step(g, norm, alpha), norm, eps)
            delta = _clip(x + delta, bounds) - x
        adv = (x + delta).detach()
        if len(runs) == 1:
            return adv
        with torch.no_grad():
            loss = F.nll_loss(predictor.log_probs(adv), y, reduction="none")
        better = loss > best_loss
        best[better] = adv[better]
        best_loss = torch.where(better, loss, best_loss)
    return best


def _pgd_deterministic(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float,
                       norm: str, steps: int, alpha: float, random_start: bool,
                       runs: Sequence[str], bounds: Bounds, generator: torch.Generator | None,
                       active: torch.Tensor) -> torch.Tensor:
    """PGD on a deterministic prediction over the rows in ``active`` (see `pgd`).

    Iterates 1..steps of every run are checked (the random start itself is not, as before);
    the check of iterate t uses the logits of the forward pass that also gives the gradient of
    step t + 1, and rows found misclassified leave the batch.
    """
    best = x.clone()
    todo = active.nonzero().squeeze(1)
    for loss_name in runs:
        # Drawn for the whole batch whatever is left, so that every row sees the start it
        # would see without the pruning (and the generator advances the same way).
        start = _random_start(x, norm, eps, generator) if random_start else None
        if todo.numel() == 0:
            continue
        idx, xs, ys = todo, x[todo], y[todo]
        delta = start[todo] if start is not None else torch.zeros_like(xs)
        delta = _clip(xs + delta, bounds) - xs
        for t in range(steps + 1):
            adv = (xs + delta).detach().requires_grad_(t < steps)
            with torch.set_grad_enabled(t < steps):
                logits = predictor.logits_fn(adv)
            keep = None
            if t > 0:
                with torch.no_grad():
                    wrong = torch.log_softmax(logits.detach().float(), -1).argmax(-1) != ys
                if bool(wrong.any()):
                    best[idx[wrong]] = adv.detach()[wrong]
                    keep = ~wrong
                    idx, xs, ys, delta = idx[keep], xs[keep], ys[keep], delta[keep]
            if t == steps or idx.numel() == 0:
                break
            scores = logits.float() if keep is None else logits.float()[keep]
            (g,) = torch.autograd.grad(_scores_loss(scores, ys, loss_name, False), adv)
            g = g if keep is None else g[keep]
            delta = _project(delta + _step(g.detach(), norm, alpha), norm, eps)
            delta = _clip(xs + delta, bounds) - xs
        # Points never broken keep the last iterate (the highest-loss point found).
        best[idx] = (xs + delta).detach()
        todo = idx
    return best


def run_attack(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, attack: str, norm: str,
               eps: float, batch_size: int = 500, clean_correct: torch.Tensor | None = None,
               skip: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Per-example robust-correctness mask (N,) of ``attack`` at ``eps``, in batches.

    Args:
        attack: ``"fgsm"`` or ``"pgd"``; remaining keyword arguments go to it.
        clean_correct: (N,) correctness of the deterministic prediction at ``x``, if known.
        skip: (N,) rows not to attack (deterministic only); they come back False.
    Returns:
        bool tensor: True where the prediction on the adversarial input is still correct
        (scored with fresh noise for a stochastic predictor).
    Raises:
        ValueError: on an unknown attack.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        cb = None if clean_correct is None else clean_correct[i:i + batch_size]
        sb = None if skip is None else skip[i:i + batch_size]
        if attack == "fgsm":
            # FGSM is the classic one-step cross-entropy attack.
            kw = {k: v for k, v in kwargs.items() if k in ("bounds", "eot_samples")}
            adv = fgsm(predictor, xb, yb, eps, norm, **kw)
            ok = _correct(predictor, adv, yb)
            if sb is not None:
                ok &= ~sb
        elif predictor.stochastic:
            ok = _correct(predictor, pgd(predictor, xb, yb, eps, norm, **kwargs), yb)
        else:
            if cb is None:
                cb = _correct(predictor, xb, yb)
            adv = pgd(predictor, xb, yb, eps, norm, clean_correct=cb, skip=sb, **kwargs)
            attacked = cb if sb is None else cb & ~sb
            ok = torch.zeros_like(attacked)
            if bool(attacked.any()):
                ok[attacked] = _correct(predictor, adv[attacked], yb[attacked])
        out.append(ok)
    return torch.cat(out)


def _fgsm_correct(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, grads: list[torch.Tensor],
                  norm: str, eps: float, bounds: Bounds, batch_size: int,
                  rows: torch.Tensor | None) -> torch.Tensor:
    """Correctness after the FGSM step of size ``eps`` along precomputed gradients.

    ``rows`` (deterministic only) limits the scoring to those rows; the others come back False.
    """
    out = []
    for j, i in enumerate(range(0, x.shape[0], batch_size)):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = _clip(xb + _project(_step(grads[j], norm, eps), norm, eps), bounds).detach()
        if rows is None:
            out.append(_correct(predictor, adv, yb))
            continue
        rb = rows[i:i + batch_size]
        ok = torch.zeros_like(rb)
        if bool(rb.any()):
            ok[rb] = _correct(predictor, adv[rb], yb[rb])
        out.append(ok)
    return torch.cat(out)


def robust_accuracy_curve(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, attack: str,
                          norm: str, epsilons: Sequence[float], cumulative: bool = True,
                          progress: bool = False, clean_log_probs: torch.Tensor | None = None,
                          **kwargs) -> list[dict]:
    """Accuracy under ``attack`` for each epsilon.

    With ``cumulative`` (deterministic predictors only), an example broken at a smaller epsilon
    counts as broken at every larger one: the adversarial input found there lies inside the
    larger ball too, so this is still a valid (and stronger) attack, and the curve is
    non-increasing by construction; such examples are not attacked again. For a stochastic
    predictor each epsilon is scored on its own, with fresh noise.

    The prediction at the clean inputs is computed once per curve (or taken from
    ``clean_log_probs``, the prediction's log-probabilities at ``x``, (N, C), e.g. from the
    suite's clean pass): it is the eps = 0 row and the starting point of the cumulative curve.
    FGSM's gradient does not depend on eps: it is computed once per curve (for a stochastic
    prediction, one EOT gradient shared by every eps, each eps scored with fresh noise).

    Returns:
        one dict per epsilon: ``{attack, norm, eps, prediction, accuracy, n_points, steps,
        eot_samples}`` (steps 1 for FGSM; eot_samples null for a deterministic prediction).
    Raises:
        ValueError: on an unknown attack or norm, or a negative eps.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    epsilons = sorted(float(e) for e in epsilons)
    for eps in epsilons:
        _check(norm, eps)
    batch_size = int(kwargs.pop("batch_size", 500))
    clean_ok = clean_correct(predictor, x, y, batch_size, clean_log_probs)
    grads: list[torch.Tensor] | None = None

    def score(eps: float, still: torch.Tensor | None) -> torch.Tensor:
        nonlocal grads
        if attack == "fgsm":
            if grads is None:
                grads = [_grad(predictor, x[i:i + batch_size], y[i:i + batch_size],
                               kwargs.get("eot_samples"))
                         for i in range(0, x.shape[0], batch_size)]
            # Cumulative: only the points still standing need scoring (the others stay broken).
            return _fgsm_correct(predictor, x, y, grads, norm, eps,
                                 kwargs.get("bounds", (0.0, 1.0)), batch_size, still)
        det = not predictor.stochastic
        return run_attack(predictor, x, y, attack, norm, eps, batch_size=batch_size,
                          clean_correct=clean_ok if det else None,
                          skip=~still if still is not None else None, **kwargs)

    eot = (kwargs.get("eot_samples") or predictor.k) if predictor.stochastic else None
    return [{
        "attack": attack, "norm": norm, "eps": eps, "prediction": predictor.name,
        "accuracy": ok.float().mean().item(), "n_points": int(x.shape[0]),
        "steps": 1 if attack == "fgsm" else int(kwargs.get("steps", 20)),
        "restarts": 1 if attack == "fgsm" else int(kwargs.get("restarts", 1)),
        "eot_samples": eot,
        "losses": ["ce"] if attack == "fgsm" else list(kwargs.get("losses", ("ce",))),
    } for eps, ok in accuracy_curve(predictor, epsilons, clean_ok, score, cumulative=cumulative,
                                    progress=f"{attack}-{norm}" if progress else None)]


def clean_correct(predictor: Predictor, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                  clean_log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) bool: the prediction is right at the clean inputs, from ``clean_log_probs`` (N, C)
    when the caller has them (the suite's clean pass), else predicted in batches."""
    if clean_log_probs is not None:
        return clean_log_probs.argmax(-1).to(y.device) == y
    return _correct_batched(predictor, x, y, batch_size)


def accuracy_curve(predictor: Predictor, epsilons: Sequence[float], clean_ok: torch.Tensor,
                   score: Callable[[float, torch.Tensor | None], torch.Tensor], *,
                   cumulative: bool = True,
                   progress: str | None = None) -> list[tuple[float, torch.Tensor]]:
    """The rule every attack curve follows: ``(eps, correct)`` for each eps, ascending.

    eps = 0 is ``clean_ok``. Otherwise ``score(eps, still)`` returns (N,) bool "still right
    under attack"; ``still`` is the mask of points not broken yet when the curve is cumulative
    (deterministic predictions: a point broken at a smaller eps counts as broken at every
    larger one, and need not be attacked again), None otherwise (a stochastic prediction is
    attacked at every eps and scored with fresh noise). ``progress``: a tqdm label, or None.
    """
    cum = cumulative and not predictor.stochastic
    still = clean_ok.clone()
    eps_iter: Iterable[float] = epsilons
    if progress:
        eps_iter = tqdm(epsilons, desc=f"{progress} ({predictor.name})", leave=False)
    out = []
    for eps in eps_iter:
        ok = clean_ok.clone() if eps == 0 else score(eps, still if cum else None)
        if cum:
            still = still & ok
            ok = still
        out.append((eps, ok))
    return out
