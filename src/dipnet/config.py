"""`DIPConfig`: every knob of a DIPNet, validated at construction."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from dipnet.parameterization import (
    DEFAULT_FLOOR,
    DEFAULT_PARAMETERIZATION,
    PARAMETERIZATIONS,
    Parameterization,
)

Placement = Literal["layers", "blocks", "input", "custom"]
BarrierScaling = Literal["elbo", "unscaled"]
BarrierReduction = Literal["sum", "mean"]
StabilityOn = Literal["logits", "probs"]

PLACEMENTS: tuple[str, ...] = ("layers", "blocks", "input", "custom")
# What a relatively initialised projection holds before `dipnet.calibrate` sets its value.
PLACEHOLDER_VARIANCE = 1e-2


class DIPConfigError(ValueError):
    """A `DIPConfig` field holds a value DIPNet cannot use. The message names the field."""


@dataclass
class DIPConfig:
    """Configuration of a Distributional Input Projection Network.

    Placement (where a learned Gaussian projection is inserted):
        placement: ``"layers"`` puts one before every Linear / Conv / recurrent / attention
            layer (PEFT's "all-linear" analogue, the paper's literal "before each layer");
            ``"blocks"`` before each repeated block (the residual stream of each transformer
            layer or residual block, detected as the elements of a ModuleList / Sequential whose
            elements share one class); ``"input"`` on the network input only (for token models
            the output of the input embedding, never the token ids); ``"custom"`` uses only
            ``target_modules`` / ``target_types``.
            Default ``"layers"``.
        target_modules: with any placement, extra modules to project. A string is a regular
            expression matched against the full module name (``re.fullmatch``); a list matches a
            name exactly or as a dotted suffix (``"fc1"`` matches ``"encoder.fc1"``).
        target_types: extra modules to project, by class or class name (``"LayerNorm"``).
        exclude_modules: modules never projected, same format as ``target_modules``; checked
            first. Default: none.

    Variances (one per input feature of each projected layer). The defaults are the update
    rule that the variance study (docs/results/variance_study/) found to let the variances reach
    the balance of data term and barrier within a normal training budget, from any start:
        init_variance: an ABSOLUTE variance every projection starts at, > 0, or None (default)
            to start relative to each layer's activations (``init_scale``). Setting it switches
            the calibration off.
        init_scale: with ``init_variance=None``, each projection starts at ``init_scale`` times
            the mean per-feature variance of ITS OWN input, measured on the first training batch
            (`DIPLoss` and `DIPTrainer` call `dipnet.calibrate` on their first call; call it
            yourself before wrapping a model in DDP; until then a projection holds 0.01).
            Activations differ in scale by orders of magnitude between layers (about 0.09 at the
            input of a Fashion-MNIST MLP, 0.002 at its head), so one absolute number is a large
            noise for one layer and none for another. Default 0.1.
        parameterization: ``"exp"`` (variance = exp(raw) + floor: a learned log-variance, so a
            step changes lambda by a fixed FACTOR at every scale) or ``"softplus"`` (variance =
            softplus(raw) + floor; identical to exp for small variances, bounded gradients for
            large ones). Default ``"exp"``.
        variance_floor: added to every variance, > 0, so that ln(variance) stays finite.
            Default 1e-6.
        variance_lr: learning rate of the variances' own optimizer group
            (`dipnet.parameter_groups`, `DIPTrainer`), > 0, or None for the optimizer's learning
            rate. With Adam a parameter moves about one learning rate per step whatever the size
            of its gradient, so at the weights' 1e-3 the variances barely leave their initial
            value (measured: 0.010 -> 0.0101-0.011 in 1,250 steps); at 0.1 they reach the same
            balance from starts 60x apart within about 600 steps. Tuned for Adam-like
            optimizers. Default 0.1.
        learn_variance: False freezes every variance at its initial value: the same projections
            as fixed Gaussian noise. In the variance study tuned fixed noise was never worse
            than learned variances (see the README's results); set it with a validated
            ``init_scale``. Default True (DIPNet as defined: the variances are learned).

    Objective (paper Eq. 3-4; gamma is the paper's "lambda"):
        alpha: weight of sum(variance) in the barrier, > 0. Default 0.1 (paper).
        beta: weight of -sum(ln variance) in the barrier, > 0. Default 0.2 (paper). Alone, the
            barrier is minimised at variance = beta / alpha.
        barrier_temperature: a multiplier on the whole barrier (alpha and beta together), > 0.
            It keeps the barrier's own minimum (beta / alpha) and sets how hard it pulls against
            the data term, so it is the learned variances' level knob: below 1 the NLL pulls the
            variances lower, above 1 the barrier pulls them towards beta / alpha. `dipnet tune`
            searches it for ``dipnet``, so that learned and frozen variances get one level knob
            each (``init_scale`` for the frozen control). Default 1.0 (the paper's barrier).
        gamma: weight of the stability penalty (unbiased variance of the outputs over the m
            trajectories, summed over outputs, averaged over examples), >= 0. Default 0.0, the
            paper's choice for fine-tuning; the paper uses about 0.05 from scratch.
        barrier_scaling: ``"elbo"`` divides the barrier by the training-set size N (the barrier is
            a prior over the whole data set, the NLL a per-example mean), ``"unscaled"`` adds it
            per mini-batch as the paper's equation is written, which with a mean NLL drives every
            variance to beta / alpha. Default ``"elbo"``.
        barrier_reduction: ``"sum"`` adds the barrier over every feature of every layer (the
            paper's sum); ``"mean"`` averages it over the features of each layer and sums over
            layers, so a 784-feature layer and a 10-feature layer are held with the same force.
            Default ``"sum"``.
        stability_on: compute the stability penalty on ``"logits"`` or ``"probs"``.
        m: sampled trajectories per example in training, >= 1, run as one batched forward pass.
            Default 1.
        k: sampled trajectories averaged for Monte Carlo prediction, >= 1. Default 8. Ignored by
            the deterministic prediction (the default prediction mode).
        chunks: run the m trajectories of a `DIPLoss` step in this many passes (1..m) when m
            copies of a batch do not fit in memory. Each pass holds about m / chunks copies and
            runs under activation checkpointing: one more forward pass per step, the same loss
            and gradients (BatchNorm aside: it normalises over the rows of one pass). Default 1.

    Raises:
        DIPConfigError: at construction, for any invalid value; the message names the field.
    """

    placement: Placement = "layers"
    target_modules: str | list[str] | None = None
    target_types: list[Any] | None = None
    exclude_modules: str | list[str] | None = None
    init_variance: float | None = None
    parameterization: Parameterization = DEFAULT_PARAMETERIZATION
    variance_floor: float = DEFAULT_FLOOR
    alpha: float = 0.1
    beta: float = 0.2
    barrier_temperature: float = 1.0
    gamma: float = 0.0
    barrier_scaling: BarrierScaling = "elbo"
    barrier_reduction: BarrierReduction = "sum"
    init_scale: float | None = 0.1
    variance_lr: float | None = 0.1
    learn_variance: bool = True
    stability_on: StabilityOn = "logits"
    m: int = 1
    k: int = 8
    chunks: int = 1
    _extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Checked in this order; the first bad field is the one the error names.
        self._check_targets()
        self._check_variances()
        self._check_objective()

    def _bad(self, name: str, expected: str) -> DIPConfigError:
        return DIPConfigError(
            f"DIPConfig.{name}={getattr(self, name)!r} is invalid: expected {expected}."
        )

    def _check_targets(self) -> None:
        """placement, target_modules / exclude_modules (normalised to lists), target_types."""
        if self.placement not in PLACEMENTS:
            raise self._bad("placement", f"one of {PLACEMENTS}")
        if self.placement == "custom" and not (self.target_modules or self.target_types):
            raise DIPConfigError(
                "DIPConfig.placement='custom' needs target_modules or target_types; "
                "set one, or choose placement='layers' / 'blocks' / 'input'."
            )
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                try:
                    re.compile(value)
                except re.error as err:
                    raise self._bad(name, f"a valid regular expression ({err})") from None
            elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
                setattr(self, name, list(value))
            else:
                raise self._bad(name, "a regex string or a list of module names / suffixes")
        if self.target_types is not None:
            if isinstance(self.target_types, (str, type)):
                self.target_types = [self.target_types]
            if not all(isinstance(t, (str, type)) for t in self.target_types):
                raise self._bad("target_types", "a list of classes or class names")
            self.target_types = list(self.target_types)

    def _check_variances(self) -> None:
        """init_variance / init_scale, alpha, beta, variance_floor, gamma."""
        if self.init_variance is None and self.init_scale is None:
            raise DIPConfigError("DIPConfig needs init_variance (an absolute starting variance) "
                                 "or init_scale (relative to each layer's activations); both "
                                 "are None.")
        for name in (("init_variance",) if self.init_variance is not None else ()) + (
                "alpha", "beta"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0 or not math.isfinite(value):
                raise self._bad(name, "a finite number > 0")
        # variance_floor > 0 is what keeps ln(variance) finite.
        for name in ("variance_floor",):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0 or not math.isfinite(value):
                raise self._bad(name, "a finite number > 0 (it keeps ln(variance) finite)")
        for name in ("gamma",):
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0 or not math.isfinite(value):
                raise self._bad(name, "a finite number >= 0")
        if self.start_variance <= self.variance_floor:
            raise DIPConfigError(
                f"DIPConfig.init_variance={self.start_variance} must exceed "
                f"variance_floor={self.variance_floor}."
            )

    def _check_objective(self) -> None:
        """The variance map, the barrier, learning the variance, the trajectories."""
        if self.parameterization not in PARAMETERIZATIONS:
            raise self._bad("parameterization", "'softplus' or 'exp'")
        if self.barrier_scaling not in ("elbo", "unscaled"):
            raise self._bad("barrier_scaling", "'elbo' (divide by the training-set size) or 'unscaled'")
        if self.barrier_reduction not in ("sum", "mean"):
            raise self._bad("barrier_reduction", "'sum' (over every feature) or 'mean' (per layer)")
        if not isinstance(self.learn_variance, bool):
            raise self._bad("learn_variance", "True or False")
        if self.variance_lr is not None and (not _is_number(self.variance_lr)
                                             or not self.variance_lr > 0
                                             or not math.isfinite(self.variance_lr)):
            raise self._bad("variance_lr", "None or a finite number > 0")
        if (not _is_number(self.barrier_temperature) or not self.barrier_temperature > 0
                or not math.isfinite(self.barrier_temperature)):
            raise self._bad("barrier_temperature", "a finite number > 0")
        if self.init_scale is not None and (not _is_number(self.init_scale)
                                            or not self.init_scale > 0
                                            or not math.isfinite(self.init_scale)):
            raise self._bad("init_scale", "None or a finite number > 0")
        if self.stability_on not in ("logits", "probs"):
            raise self._bad("stability_on", "'logits' or 'probs'")
        for name in ("m", "k", "chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self._bad(name, "an integer >= 1")
        if self.chunks > self.m:
            raise self._bad("chunks", f"an integer from 1 to m={self.m} (passes the m trajectories run "
                                "in)")
        if self.gamma > 0 and self.m < 2:
            raise DIPConfigError(
                f"DIPConfig.gamma={self.gamma} needs m >= 2 trajectories (got m={self.m}): the "
                "stability penalty is a variance across trajectories. Set m >= 2 or gamma = 0."
            )

    def barrier_weights(self) -> tuple[float, float]:
        """The barrier's (alpha, beta) as they enter the loss: both times
        ``barrier_temperature``. Every caller of `dipnet.barrier` takes them from here."""
        return self.alpha * self.barrier_temperature, self.beta * self.barrier_temperature

    @property
    def relative_init(self) -> bool:
        """Whether the projections start relative to their activations (calibrated on the first
        batch): ``init_variance`` is None."""
        return self.init_variance is None

    @property
    def start_variance(self) -> float:
        """The variance a projection holds when it is created: ``init_variance``, or 0.01 until
        the calibration replaces it."""
        return float(self.init_variance) if self.init_variance is not None else PLACEHOLDER_VARIANCE

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON/YAML-serialisable values (classes become names)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if f.name == "target_types" and value is not None:
                value = [v if isinstance(v, str) else v.__name__ for v in value]
            out[f.name] = value
        return out

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> "DIPConfig":
        """A config from a named recipe (`dipnet.recipes.RECIPES`): ``"scratch"``,
        ``"finetune"`` or ``"robust"``, each resting on a committed measurement (its
        ``evidence``; docs/recipe.md says which to use per kind of model).

        Args:
            name: the recipe.
            overrides: DIPConfig fields to set on top (e.g. ``init_scale=0.2``).
        Returns:
            The DIPConfig.
        Raises:
            DIPConfigError: an unknown recipe or field, or an invalid value.
        """
        from dipnet.recipes import RECIPES, recipe_fields

        if name not in RECIPES:
            raise DIPConfigError(f"unknown DIPConfig recipe {name!r}: choose from "
                                 f"{', '.join(RECIPES)} (docs/recipe.md)")
        return cls.from_dict(recipe_fields(name, overrides))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DIPConfig":
        """Build a config from `to_dict` output.

        Raises:
            DIPConfigError: on an unknown key or an invalid value.
        """
        known = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DIPConfigError(
                f"unknown DIPConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
