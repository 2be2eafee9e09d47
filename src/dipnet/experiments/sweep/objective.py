"""What `dipnet tune` maximises: validation accuracy, robust validation accuracy, or a mix.

Robustness is where DIPNet's projections earned their place in the variance study, yet every
arm there was tuned on clean validation accuracy. ``--objective robust`` tunes each arm on its
accuracy under PGD at ``eps`` on validation points, with expectation over transformation for a
method whose default prediction is sampled (the same attack code as the evaluation suite,
`dipnet.evaluation.attacks.run_attack`); ``--objective mix`` maximises
``(1 - weight) * clean + weight * robust``.

Only the value told to Optuna at the end of a trial changes. Pruning still watches the clean
validation accuracy of every epoch (one PGD run per epoch would cost more than the epoch), so a
trial is compared with the others on the same quantity at every epoch. The validation points
attacked are the same for every trial and every method (a subset drawn with a fixed seed), so
the objective differs between arms only by the models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dipnet.errors import UserError

OBJECTIVES = ("accuracy", "robust", "mix")
#: Defaults: PGD L-inf at 0.05 (the README's robustness headline), 10 steps, 8 EOT samples,
#: 500 validation points (a 0.5-point difference in robust accuracy is then about 1 standard
#: error of a binomial at p 0.5: coarser than the clean objective over 6,000 images, which is
#: the price of an attack per trial).
DEFAULTS: dict[str, Any] = {"kind": "accuracy", "norm": "linf", "eps": 0.05, "steps": 10,
                            "eot_samples": 8, "points": 500, "weight": 0.5, "subset_seed": 0}
_KEYS = set(DEFAULTS)


def objective_settings(raw: dict[str, Any] | None) -> dict[str, Any]:
    """The objective with its defaults filled in, validated.

    Args:
        raw: ``{kind, norm, eps, steps, eot_samples, points, weight, subset_seed}``, any subset
            (``--objective KIND`` sets ``kind``; ``--set objective.eps=0.1`` the others).
    Returns:
        The full settings dict. For ``kind="accuracy"`` only ``kind`` is kept, so that a tune
        on clean accuracy has the same identity whatever the attack defaults are.
    Raises:
        UserError: an unknown key or kind, or a value out of range (the message names it).
    """
    raw = dict(raw or {})
    stray = sorted(set(raw) - _KEYS)
    if stray:
        raise UserError(f"unknown objective setting(s) {', '.join(stray)}: use "
                        f"{', '.join(sorted(_KEYS))}")
    out = {**DEFAULTS, **raw}
    if out["kind"] not in OBJECTIVES:
        raise UserError(f"--objective {out['kind']!r} is unknown: choose from "
                        f"{', '.join(OBJECTIVES)}")
    if out["kind"] == "accuracy":
        return {"kind": "accuracy"}
    if out["norm"] not in ("linf", "l2"):
        raise UserError(f"objective.norm={out['norm']!r}: choose linf or l2")
    eps = out["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and eps > 0):
        raise UserError(f"objective.eps={eps!r} must be a number > 0 (the attack budget on "
                        f"[0, 1] inputs), e.g. --set objective.eps=0.05")
    for key in ("steps", "eot_samples", "points"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"objective.{key}={v!r} must be an integer >= 1")
    w = out["weight"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1:
        raise UserError(f"objective.weight={w!r} must be in (0, 1]: the share of robust "
                        f"accuracy in --objective mix")
    if out["kind"] == "robust":
        out.pop("weight")
    out["eps"] = float(eps)
    return out


def describe(settings: dict[str, Any]) -> str:
    """One line for tune.md and best.yaml's tuning block."""
    if settings["kind"] == "accuracy":
        return "validation accuracy after the last epoch"
    attack = (f"PGD {settings['norm']} eps {settings['eps']:g} ({settings['steps']} steps, EOT "
              f"{settings['eot_samples']} for sampled predictions) on {settings['points']} "
              f"validation points")
    if settings["kind"] == "robust":
        return f"robust validation accuracy after the last epoch: {attack}"
    w = settings["weight"]
    return (f"{1 - w:g} x validation accuracy + {w:g} x robust validation accuracy after the "
            f"last epoch ({attack})")


def final_value(settings: dict[str, Any], clean: float, robust: float | None) -> float:
    """The number told to Optuna: clean, robust or their weighted mix."""
    if settings["kind"] == "accuracy":
        return clean
    assert robust is not None
    if settings["kind"] == "robust":
        return robust
    return (1 - settings["weight"]) * clean + settings["weight"] * robust


def robust_validation_accuracy(cfg_dict: dict[str, Any], run_dir: str | Path,
                               settings: dict[str, Any]) -> float:
    """Accuracy of a trial's final model under the objective's attack, on validation points.

    Rebuilds the trial's model exactly as training built it (`train.prepare_model_and_data`),
    loads its last checkpoint (written before the epoch callback ends the trial), and attacks
    the method's default prediction: deterministic, or sampled with EOT. The test split is not
    touched.

    Args:
        cfg_dict: the trial's RunConfig as a dict.
        run_dir: the trial's folder (holding its checkpoint).
        settings: `objective_settings` output, kind robust or mix.
    Returns:
        The fraction of the attacked validation points still classified correctly.
    Raises:
        UserError: no checkpoint, or no validation split.
    """
    import torch

    from dipnet.evaluation.attacks import run_attack
    from dipnet.evaluation.suite import _bounds, run_predictors
    from dipnet.experiments.run.config import RunConfig
    from dipnet.experiments.run.checkpoint import load_checkpoint
    from dipnet.experiments.run.distributed import resolve_device
    from dipnet.experiments.run.train import prepare_model_and_data

    cfg = RunConfig.from_dict(cfg_dict)
    ckpt = load_checkpoint(Path(run_dir))
    if ckpt is None:
        raise UserError(f"trial {run_dir} has no checkpoint to attack")
    device = resolve_device(cfg.device)
    with torch.random.fork_rng():
        prep = prepare_model_and_data(cfg, device)
        prep.model.load_state_dict(ckpt[0])
        val = prep.val
        if not len(val):
            raise UserError("the robust objective attacks the validation split, which is empty")
        g = torch.Generator().manual_seed(int(settings["subset_seed"]))
        idx = torch.randperm(len(val), generator=g)[:settings["points"]].to(val.x.device)
        x, y = val.x[idx], val.y[idx]
        # the evaluation suite's predictors (eval mode); the method's default one is attacked
        preds = run_predictors(prep, settings["eot_samples"])
        pred = next((p for p in preds if p.name == prep.method.default_prediction), preds[0])
        torch.manual_seed(int(settings["subset_seed"]))
        ok = run_attack(pred, x, y, "pgd", settings["norm"], settings["eps"],
                        steps=settings["steps"], eot_samples=settings["eot_samples"],
                        bounds=_bounds(val.x))
    return float(ok.float().mean())
