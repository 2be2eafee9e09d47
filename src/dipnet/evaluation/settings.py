"""The evaluation suite's settings: parts, attacks, the quick and full suites (no torch).

Kept apart from `dipnet.evaluation.suite` so that building the command line's parser
(`dipnet.cli.evaluate`) imports neither torch nor any measuring code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from dipnet.errors import UserError

PARTS = ("clean", "calibration", "attacks", "corruptions", "noise", "ood", "smoothness")
#: The L2 radii at which certify.json reports certified accuracy (model-input units); they
#: include every PGD L2 epsilon of the quick and full suites, for the report's check.
DEFAULT_RADII = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class AttackInfo:
    """What the suite, the CLI and the report know of one attack (the registry's entry).

    Attributes:
        name: the name in ``--attacks`` and in evaluation.json.
        title: how the report's tables and figures name it.
        family: ``"gradient"`` (white-box, `dipnet.evaluation.attacks.robust_accuracy_curve`,
            run at every ``linf_eps`` / ``l2_eps``) or ``"strong"`` (the ART attacks of
            `dipnet.evaluation.strong_attacks.strong_accuracy_curve`, run at
            ``strong_linf_eps`` / ``strong_l2_eps`` on ``strong_points``).
        needs_images: the attack works on (N, C, H, W) images only; the suite skips it, with
            a note, on other inputs.
    """

    name: str
    title: str
    family: str
    needs_images: bool = False


#: The attack registry, in the order the CLI lists and the report shows them. Adding an attack
#: is its function (in `attacks` or `strong_attacks`, dispatched there by name) and one
#: `_register_attack` line below (the name tuples are derived once, at import); the suite
#: plans it by its family, the CLI offers it and the report titles it from here.
ATTACKS: dict[str, AttackInfo] = {}


def _register_attack(name: str, title: str, family: str, *, needs_images: bool = False) -> None:
    """Add an attack to `ATTACKS` (see `AttackInfo` for the fields).

    Raises:
        ValueError: an unknown family, or a name registered already.
    """
    if family not in ("gradient", "strong"):
        raise ValueError(f"attack family must be 'gradient' or 'strong', got {family!r}")
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is registered already")
    ATTACKS[name] = AttackInfo(name, title, family, needs_images)


_register_attack("fgsm", "FGSM", "gradient")
_register_attack("pgd", "PGD", "gradient")
_register_attack("apgd-ce", "APGD-CE", "strong")
_register_attack("apgd-dlr", "APGD-DLR", "strong")
_register_attack("square", "Square", "strong", needs_images=True)

ATTACK_NAMES: tuple[str, ...] = tuple(ATTACKS)
GRADIENT_ATTACKS: tuple[str, ...] = tuple(n for n, a in ATTACKS.items() if a.family == "gradient")
STRONG_ATTACKS: tuple[str, ...] = tuple(n for n, a in ATTACKS.items() if a.family == "strong")


@dataclass
class SuiteSettings:
    """Sizes and budgets of one evaluation suite (see docs/evaluation.md for the reasoning).

    Attacks: ``linf_eps`` / ``l2_eps`` on [0, 1] inputs (0 is the clean check); FGSM at every
    L-inf epsilon (and L2 if ``fgsm_l2``), PGD at every epsilon of both norms with ``pgd_steps``
    steps (step 2.5 eps / steps), ``restarts`` random starts and ``pgd_losses``; sampled
    predictions with EOT over ``eot_samples`` trajectories per step (None = k).
    """

    clean_points: int | None = None  # None = the whole test set (clean and calibration)
    attack_points: int = 300
    linf_eps: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2)
    l2_eps: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    fgsm_l2: bool = False
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    pgd_steps: int = 20
    # AutoAttack-style attacks from ART (dipnet.evaluation.strong_attacks), run when named in
    # ``attacks``: on the first ``strong_points`` attacked points, at their own epsilons.
    strong_linf_eps: tuple[float, ...] = (0.0, 0.05, 0.1)
    strong_l2_eps: tuple[float, ...] = (0.0, 1.0)
    strong_points: int = 500
    apgd_steps: int = 100
    square_queries: int = 1000
    # Trajectories per APGD / Square call on a sampled prediction: 20 is AutoAttack's version
    # for randomised defences ("rand": APGD-CE and APGD-DLR with EOT over 20 draws, Croce &
    # Hein 2020). None: the PGD's ``eot_samples`` (or k).
    strong_eot_samples: int | None = 20
    # Monte Carlo predictions stack k copies of a batch on the batch axis; at most this many
    # rows go through the model in one pass (the memory budget; lower it for large models).
    # None: 512 on a CPU (where bigger passes are slower, see predictors.DEFAULT_ROWS),
    # 65,536 on a GPU.
    mc_max_rows: int | None = None
    restarts: int = 1
    pgd_losses: tuple[str, ...] = ("ce",)
    eot_samples: int | None = 8
    corruption_points: int = 200
    corruptions: tuple[str, ...] | None = None  # None = the quick or full list for the input
    severities: tuple[int, ...] = (1, 2)
    # Test-time Gaussian noise of these standard deviations (on [0, 1] inputs, clipped), on
    # the corruption subset: accuracy against sigma in the report.
    noise_sigmas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
    ood_points: int | None = 2000
    smoothness_points: int = 100
    lipschitz_random: int = 4
    lipschitz_steps: int = 10
    hessian_iters: int = 10
    weight_points: int = 256
    trace_probes: int = 8
    power_iters: int = 8
    subset_seed: int = 0
    batch_size: int = 500
    quick_corruptions: bool = True
    parts: tuple[str, ...] = PARTS

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


SUITES: dict[str, SuiteSettings] = {
    "quick": SuiteSettings(),
    "full": SuiteSettings(
        attack_points=2000, linf_eps=(0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
        l2_eps=(0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0), fgsm_l2=True, pgd_steps=50, restarts=2,
        attacks=("fgsm", "pgd") + STRONG_ATTACKS,
        pgd_losses=("ce", "margin"), eot_samples=None, corruption_points=2000,
        severities=(1, 2, 3), ood_points=None, smoothness_points=500, lipschitz_random=16,
        lipschitz_steps=20, hessian_iters=30, weight_points=1024, trace_probes=30,
        power_iters=20, quick_corruptions=False),
}


def get_settings(suite: str, **overrides: Any) -> SuiteSettings:
    """The named suite's settings with ``overrides`` applied (None values are ignored).

    Raises:
        UserError: unknown suite or unknown override name.
    """
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}.")
    fields = {f.name for f in dataclasses.fields(SuiteSettings)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise UserError(f"unknown suite setting(s) {bad}; known: {sorted(fields)}.")
    base = SUITES[suite]
    for key, value in overrides.items():
        ref = getattr(base, key)
        ref = ref if ref is not None else getattr(SUITES["full" if suite == "quick" else "quick"], key)
        if value is None or ref is None:
            continue
        if isinstance(ref, bool):
            ok = isinstance(value, bool)
        elif isinstance(ref, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(ref, tuple):
            ok = isinstance(value, (tuple, list))
        else:
            ok = isinstance(value, type(ref))
        if not ok and not (key in ("clean_points", "ood_points", "eot_samples", "mc_max_rows",
                                   "strong_eot_samples")
                           and isinstance(value, int)):
            raise UserError(f"suite setting {key}={value!r} is invalid: expected a value like {ref!r}.")
    for key, allowed in (("parts", PARTS), ("attacks", ATTACK_NAMES), ("pgd_losses", ("ce", "margin"))):
        value = overrides.get(key)
        if value is not None and (not value or set(value) - set(allowed)):
            raise UserError(f"{key}={list(value)} is invalid: choose from {', '.join(allowed)}.")
    for key in ("linf_eps", "l2_eps", "strong_linf_eps", "strong_l2_eps", "noise_sigmas"):
        value = overrides.get(key)
        if value is not None and any(not math.isfinite(float(e)) or float(e) < 0 for e in value):
            raise UserError(f"{key}={list(value)} is invalid: epsilons must be numbers >= 0.")
    for key in ("clean_points", "ood_points", "attack_points", "corruption_points", "smoothness_points", "weight_points",
                "pgd_steps", "restarts", "eot_samples", "batch_size", "strong_points", "apgd_steps",
                "square_queries", "mc_max_rows", "strong_eot_samples"):
        value = overrides.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{key}={value!r} is invalid: expected an integer >= 1.")
    sev = overrides.get("severities")
    if sev is not None and (not sev or any(v not in (1, 2, 3, 4, 5) for v in sev)):
        raise UserError(f"severities={list(sev)} is invalid: choose from 1..5.")
    return dataclasses.replace(SUITES[suite], **{k: v for k, v in overrides.items() if v is not None})
