"""Training methods compared in the experiments: standard, DIPNet and the paper's baselines.

A `Method` decides how a model is prepared (projections, dropout hooks), what one training step
computes, and how the trained model predicts. Every default comes from the method's paper; the
source is stated next to it.

Interface used by the trainer and by evaluation:
    prepare_model(model, cfg, num_train) -> model     in place (before the optimizer is built)
    make_optimizer(model, cfg) -> torch.optim.Optimizer
    training_loss(model, x, y) -> (loss, parts)       parts: floats, incl. "correct"
    train_step(model, optimizer, x, y) -> parts       backward + step (SAM needs two passes)
    predict_logits(model, x) -> logits                deterministic, differentiable
    sample_logits(model, x) -> logits | None          ONE stochastic trajectory, differentiable
    predictive_probs(model, x, k) -> probs            the method's default prediction
    default_prediction: "deterministic" | "sampled"
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import dipnet

from dipnet.config import DIPConfig, DIPConfigError
from dipnet.errors import UserError
from dipnet.inject import unwrap
from dipnet.predict import average_probs

_METHODS: dict[str, type["Method"]] = {}


def register_method(cls: type["Method"]) -> type["Method"]:
    """Class decorator registering a `Method` subclass under ``cls.name``."""
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is already registered")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_METHODS)


def describe_methods() -> dict[str, str]:
    """Name -> one-line description with the defaults."""
    return {n: f"{c.description} (defaults: {c.defaults})" for n, c in sorted(_METHODS.items())}


def get_method(name: str, **params: Any) -> "Method":
    """A fresh method instance with ``params`` over its paper defaults.

    Raises:
        UserError: unknown method, unknown parameter, or a bad value.
    """
    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(list_methods())}.")
    return _METHODS[name](**params)


def compile_for_training(net: nn.Module, cfg: Any) -> nn.Module:
    """The module the training loop calls: ``net`` itself, or ``torch.compile(net)`` when the
    run says ``compile: true`` (with ATen's random ops: `dipnet.noise.prepare_compile`).

    The optimizer and the checkpoints keep using the uncompiled model; the compiled module
    shares its parameters.
    """
    if not getattr(cfg, "compile", False):
        return net
    from dipnet.noise import prepare_compile

    prepare_compile()
    return torch.compile(net)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Method:
    """Base class: plain cross-entropy training, deterministic prediction."""

    name = "base"
    description = ""
    defaults: dict[str, Any] = {}
    default_prediction = "deterministic"

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise UserError(f"method {self.name!r} has no parameter(s) {unknown}; its "
                            f"parameters are {sorted(self.defaults) or 'none'}.")
        self.params: dict[str, Any] = {**self.defaults, **params}
        self.validate()

    def validate(self) -> None:
        """Check ``self.params``; raise UserError naming a bad one."""

    def _require(self, key: str, ok: Callable[[Any], bool], expected: str) -> None:
        if not ok(self.params[key]):
            raise UserError(f"method {self.name!r} parameter {key}={self.params[key]!r} is "
                            f"invalid: expected {expected}.")

    # ------------------------------------------------------------------ set-up
    def prepare_model(self, model: nn.Module, cfg: Any = None, num_train: int = 0) -> nn.Module:
        """Modify the model in place for this method (default: nothing); returns it."""
        return model

    def extra_parameters(self, model: nn.Module) -> int:
        """Trainable parameters this method added to the model."""
        return 0

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (weight decay on the model's own weights)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": weight_decay}]

    def make_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """The optimizer ``cfg.optimizer`` with ``cfg.lr`` / weight decay / momentum."""
        groups = self.parameter_groups(unwrap(model), cfg.weight_decay)
        cls, kwargs = base_optimizer(cfg)
        return cls(groups, **kwargs)

    # ------------------------------------------------------------------ training
    def training_loss(self, model: nn.Module, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one mini-batch and its parts (floats; ``correct`` counts right answers)."""
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": float(loss.detach()), "correct": _correct(logits, y)}

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns the loss parts."""
        optimizer.zero_grad(set_to_none=True)
        loss, parts = self.training_loss(model, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: non-finite training loss {float(loss)}")
        loss.backward()
        self.after_backward(model)
        optimizer.step()
        return parts

    def after_backward(self, model: nn.Module) -> None:
        """Called between ``backward()`` and ``optimizer.step()`` (dipnet: reads the variance
        gradients for monitoring). Default: nothing."""

    def epoch_stats(self, model: nn.Module) -> dict[str, Any]:
        """Extra per-epoch numbers for the history (dipnet: variances)."""
        return {}

    def final_stats(self, model: nn.Module) -> dict[str, Any]:
        """Extra numbers for metrics.json at the end of training (dipnet: variance histograms)."""
        return {}

    def check_memory(self, x: torch.Tensor) -> None:
        """Refuse, before anything is written, a setting whose training step cannot fit in
        memory on a batch like ``x`` (dipnet: m copies of it). Default: nothing.

        Raises:
            UserError: naming the setting and how to lower it.
        """

    def calibrate(self, model: nn.Module, x: torch.Tensor) -> None:
        """Set data-dependent initial state from a batch of training inputs, after
        `prepare_model` and before any checkpoint is loaded (dipnet: the variances relative to
        each layer's activation scale). Default: nothing."""

    # ------------------------------------------------------------------ prediction
    def predict_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The deterministic prediction's logits (differentiable; caller sets eval mode)."""
        return model(x)

    def sample_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """Logits of ONE stochastic trajectory (differentiable), or None if the method has no
        stochastic prediction."""
        return None

    @property
    def has_sampling(self) -> bool:
        """Whether `sample_logits` gives a stochastic trajectory."""
        return type(self).sample_logits is not Method.sample_logits

    def predictive_probs(self, model: nn.Module, x: torch.Tensor, k: int = 16,
                         mode: str | None = None) -> torch.Tensor:
        """Class probabilities of the method's default prediction (or ``mode``).

        ``"deterministic"``: softmax of `predict_logits`; ``"sampled"``: mean of the softmax of
        k `sample_logits` trajectories (probabilities, not logits, are averaged: the rule of
        `dipnet.predict`, `dipnet.predict.average_probs`).
        """
        mode = mode or self.default_prediction
        if mode == "deterministic" or not self.has_sampling:
            return self.predict_logits(model, x).softmax(-1)
        samples = [self.sample_logits(model, x) for _ in range(k)]
        return average_probs(torch.stack(samples, 0))  # type: ignore[arg-type]


def base_optimizer(cfg: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """(optimizer class, keyword arguments) for ``cfg.optimizer``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD, {"lr": cfg.lr, "momentum": cfg.momentum}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW, {"lr": cfg.lr}
    return torch.optim.Adam, {"lr": cfg.lr}


def _correct(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.detach().argmax(-1) == y).sum())


# ---------------------------------------------------------------------- standard
@register_method
class Standard(Method):
    """Empirical risk minimisation with cross-entropy."""

    name = "standard"
    description = "standard training (cross-entropy)"


# ---------------------------------------------------------------------- DIPNet
@register_method
class DIPNetMethod(Method):
    """DIPNet (paper Eq. 3-4) via `dipnet.project` and `dipnet.DIPLoss`; parameters are the
    `dipnet.DIPConfig` fields (placement, alpha, beta, gamma, m, ...) and ``variance_lr``.
    Prediction is deterministic (projections off; the paper's Algorithm 3); `sample_logits`
    draws one trajectory through every projection.

    Every epoch the history records each layer's variance statistics (``variance``: mean, min,
    max, quantiles, initial value, relative change) and the mean gradient of the data term and of
    the barrier with respect to lambda (``variance_grad``), so a run shows whether its variances
    learned anything (docs/results/variance_study/)."""

    name = "dipnet"
    description = "DIPNet: learned Gaussian input projection before every layer"
    # variance_lr: learning rate of the variances; None = the run's lr (the paper learns them
    # "with the weights" and gives no separate rate). With Adam a raw variance moves about lr
    # per step whatever its gradient, so at lr 1e-3 a few hundred steps leave the variances near
    # their initial value: docs/results/variance_study/ measures the update rules.
    defaults = DIPConfig().to_dict()

    def validate(self) -> None:
        params = dict(self.params)
        self.profile = params.pop("profile", None)
        try:
            self.dip_config = DIPConfig.from_dict(params)
        except DIPConfigError as err:
            raise UserError(f"method {self.name!r}: {err}") from None
        self.variance_lr = self.dip_config.variance_lr
        self.loss_fn: dipnet.DIPLoss | None = None
        self.meter: dipnet.VarianceGradientMeter | None = None

    def prepare_model(self, model: nn.Module, cfg: Any = None, num_train: int = 0) -> nn.Module:
        dipnet.project(model, self.dip_config)
        # The config is passed explicitly: under DDP the wrapper does not carry the model's
        # projection config. num_train is the FULL training-set size (ELBO scaling), also
        # under DDP, where every rank's mean NLL estimates the same per-example mean.
        self.loss_fn = dipnet.DIPLoss(self.dip_config, num_train=max(int(num_train), 1))
        self.meter = dipnet.VarianceGradientMeter(self.dip_config, max(int(num_train), 1))
        return model  # project() froze the variances if the config says learn_variance=False

    @property
    def learn_variance(self) -> bool:
        """Whether the variances are trained (`DIPConfig.learn_variance`)."""
        return self.dip_config.learn_variance

    def check_memory(self, x: torch.Tensor) -> None:
        from dipnet.objective import BatchTooLargeError, check_trajectories_fit

        try:
            check_trajectories_fit(x, self.dip_config)
        except BatchTooLargeError as err:
            raise UserError(f"{err} (in a run: --set dip.m=N, --set dip.chunks=N or "
                            "--batch-size N)") from None

    def calibrate(self, model: nn.Module, x: torch.Tensor) -> None:
        if self.dip_config.relative_init:
            # Under the same seed the same weights and examples give the same values, so a
            # resumed run recomputes them identically before its checkpoint overwrites them.
            dipnet.calibrate(unwrap(model), x)

    def extra_parameters(self, model: nn.Module) -> int:
        return sum(p.numel() for p in dipnet.variance_parameters(unwrap(model)))

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        # The library's rule (variances apart, no weight decay on them, the config's
        # variance_lr; none when they are frozen), with the run's weight decay on the weights.
        own, *variance_group = dipnet.parameter_groups(model, self.variance_lr)
        weights = [p for p in own["params"] if p.requires_grad]
        return [{"params": weights, "weight_decay": weight_decay}, *variance_group]

    def training_loss(self, model, x, y):
        if self.loss_fn is None:
            raise RuntimeError("call prepare_model before training")
        parts = self.loss_fn(model, x, y)
        out = parts.as_floats()
        out["loss"] = out.pop("total")
        out["correct"] = _correct(parts.outputs[0], y)
        return parts.total, out

    def after_backward(self, model: nn.Module) -> None:
        if self.meter is not None and self.learn_variance:
            self.meter.update(unwrap(model))

    def epoch_stats(self, model: nn.Module) -> dict[str, Any]:
        stats = dipnet.variance_stats(unwrap(model))
        out: dict[str, Any] = {"variance_mean": {k: v["mean"] for k, v in stats.items()},
                               "variance": stats}
        if self.meter is not None and self.learn_variance:
            out["variance_grad"] = self.meter.summary()
        return out

    def final_stats(self, model: nn.Module) -> dict[str, Any]:
        stats = dipnet.variance_stats(unwrap(model))
        return {"variance_init": {k: v["init"] for k, v in stats.items()},
                "variance_final": stats,
                "variance_final_hist": dipnet.variance_histograms(unwrap(model))}

    def predict_logits(self, model, x):
        with dipnet.deterministic(unwrap(model)):
            return model(x)

    def sample_logits(self, model, x):
        with dipnet.sampling(unwrap(model)):
            return model(x)


@register_method
class FixedNoise(DIPNetMethod):
    """The control that isolates what LEARNING the variances buys: the same projections as
    ``dipnet`` (same placement, same initial variance or ``init_scale`` calibration, same m),
    with every variance frozen. ``profile`` (a mapping from projected layer name, as in a dipnet
    run's ``variance_mean``, to a variance) freezes each layer at a given value instead, e.g. the
    per-layer profile a learned run ended with. The barrier is then a constant and does not
    change the gradients."""

    name = "fixed_noise"
    description = "DIPNet's projections with the variances frozen (the learning control)"
    defaults = {**DIPConfig().to_dict(), "profile": None}

    def validate(self) -> None:
        super().validate()
        self.dip_config.learn_variance = False
        if self.profile is not None and not (
                isinstance(self.profile, dict)
                and all(isinstance(k, str) and _is_num(v) and v > 0
                        for k, v in self.profile.items())):
            raise UserError("method 'fixed_noise' parameter profile must map layer names to "
                            "variances > 0 (e.g. {features.1: 0.02, head: 0.005}) or be null.")

    def prepare_model(self, model, cfg=None, num_train=0):
        super().prepare_model(model, cfg, num_train)
        if self.profile is not None:
            projs = {name or "<input>": p for name, p in dipnet.projections(model).items()}
            unknown = sorted(set(self.profile) - set(projs))
            missing = sorted(set(projs) - set(self.profile))
            if unknown or missing:
                raise UserError(f"method 'fixed_noise' profile does not fit the model: unknown "
                                f"layers {unknown[:3]}, layers without a value {missing[:3]}; "
                                f"its projected layers are {sorted(projs)[:6]}.")
            for name, value in self.profile.items():
                projs[name].set_variance(float(value))
        return model

    def calibrate(self, model, x):
        if self.profile is None:
            super().calibrate(model, x)


# ---------------------------------------------------------------------- SAM
@register_method
class SAMMethod(Method):
    """Sharpness-Aware Minimisation (Foret et al. 2021) with `pytorch_optimizer.SAM` around the
    configured base optimizer. rho = 0.05 is the paper's default (its CIFAR setting)."""

    name = "sam"
    description = "sharpness-aware minimisation (pytorch_optimizer.SAM)"
    defaults = {"rho": 0.05, "adaptive": False}

    def validate(self) -> None:
        self._require("rho", lambda v: _is_num(v) and v > 0, "a number > 0")
        self._require("adaptive", lambda v: isinstance(v, bool), "true or false")

    def make_optimizer(self, model, cfg):
        from pytorch_optimizer import SAM

        cls, kwargs = base_optimizer(cfg)
        groups = self.parameter_groups(unwrap(model), cfg.weight_decay)
        return SAM(groups, base_optimizer=cls, rho=float(self.params["rho"]),
                   adaptive=bool(self.params["adaptive"]), **kwargs)

    def train_step(self, model, optimizer, x, y):
        from pytorch_optimizer.optimizer.utils import disable_running_stats, enable_running_stats

        optimizer.zero_grad(set_to_none=True)
        loss, parts = self.training_loss(model, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"sam: non-finite training loss {float(loss)}")
        loss.backward()
        optimizer.first_step(zero_grad=True)  # type: ignore[attr-defined]
        # The second pass at the perturbed weights must not update BatchNorm's running
        # statistics a second time (as in the reference implementation).
        disable_running_stats(model)
        try:
            F.cross_entropy(model(x), y).backward()
        finally:
            enable_running_stats(model)
        optimizer.second_step(zero_grad=True)  # type: ignore[attr-defined]
        return parts


# ---------------------------------------------------------------------- input noise
class _GaussianInput(Method):
    defaults = {"sigma": 0.25}

    def validate(self) -> None:
        self._require("sigma", lambda v: _is_num(v) and v >= 0, "a number >= 0")

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        # Not clipped to [0, 1]: Cohen et al. add unclipped Gaussian noise.
        return x + float(self.params["sigma"]) * torch.randn_like(x)

    def training_loss(self, model, x, y):
        return super().training_loss(model, self._noisy(x), y)


@register_method
class RandomizedSmoothing(_GaussianInput):
    """Randomized smoothing (Cohen et al. 2019): train on x + N(0, sigma^2), predict with the
    smoothed classifier, a Monte Carlo average over noisy copies (cfg.mc_samples of them;
    probabilities are averaged, the differentiable "soft" smoothing of Salman et al. 2019,
    instead of hard votes). sigma = 0.25 is Cohen et al.'s smallest CIFAR-10 setting."""

    name = "rs"
    description = "randomized smoothing: Gaussian input noise, Monte Carlo prediction"
    defaults = {"sigma": 0.25}
    default_prediction = "sampled"

    def sample_logits(self, model, x):
        return model(self._noisy(x))


@register_method
class InputNoise(_GaussianInput):
    """Gaussian noise on the input during training only (Bishop 1995), deterministic
    prediction. sigma = 0.1 equals the old DIPNet default's initial standard deviation
    (absolute variance 1e-2), i.e. DIPNet's input projection alone with the variance frozen:
    the ablation the paper's reviewers asked for (`fixed_noise` is the same at every layer). No
    sampled prediction: that would be randomized smoothing (rs)."""

    name = "input_noise"
    description = "Gaussian input noise in training, deterministic prediction"
    defaults = {"sigma": 0.1}


# ---------------------------------------------------------------------- dropout
class _DropoutHooks:
    """Dropout on the input of every Linear / Conv, as forward pre-hooks (no new modules, no
    state_dict keys). ``mc`` keeps it on in eval mode (MC dropout, Gal & Ghahramani 2016)."""

    def __init__(self) -> None:
        self.mc = False

    def hook(self, p: float) -> Callable:
        def pre_hook(module: nn.Module, args: tuple) -> tuple:
            return (F.dropout(args[0], p, training=module.training or self.mc),) + args[1:]
        return pre_hook


@register_method
class Dropout(Method):
    """Dropout (Srivastava et al. 2014) before every Linear / Conv layer, with their rates:
    on the network input 0.2 for an MLP (retention 0.8) and 0.1 for a conv net (retention
    0.9; ``p_input`` null picks by the first layer's type), 0.5 on hidden Linear inputs, 0.25
    on hidden conv inputs (their conv nets retained 0.75 in the conv layers). Deterministic
    prediction uses the rescaled net (inverted dropout); `sample_logits` is MC dropout."""

    name = "dropout"
    description = "dropout before every Linear/Conv layer; MC dropout for sampling"
    defaults = {"p": 0.5, "p_input": None, "p_conv": 0.25}

    def validate(self) -> None:
        for key in self.defaults:
            self._require(key, lambda v: (v is None and key == "p_input")
                          or (_is_num(v) and 0 <= v < 1), "a number in [0, 1)")
        self.hooks = _DropoutHooks()

    def prepare_model(self, model, cfg=None, num_train=0):
        first = True
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if first:
                    p = self.params["p_input"]
                    if p is None:
                        p = 0.2 if isinstance(module, nn.Linear) else 0.1
                    first = False
                else:
                    p = self.params["p_conv"] if not isinstance(module, nn.Linear) \
                        else self.params["p"]
                module.register_forward_pre_hook(self.hooks.hook(float(p)))
        return model

    def sample_logits(self, model, x):
        self.hooks.mc = True
        try:
            return model(x)
        finally:
            self.hooks.mc = False


# ---------------------------------------------------------------------- mixing augmentations
def _mixed_ce(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor,
              lam: float) -> torch.Tensor:
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y2)


def _beta(alpha: float) -> float:
    # From torch's global RNG, so that seeding / checkpointing torch covers it.
    return float(torch.distributions.Beta(alpha, alpha).sample())


@register_method
class Mixup(Method):
    """Mixup (Zhang et al. 2018): train on lam*x_i + (1-lam)*x_j with the mixed loss,
    lam ~ Beta(alpha, alpha), one lam per batch as in their code. alpha = 1.0 is their CIFAR
    setting (0.2 for ImageNet)."""

    name = "mixup"
    description = "Mixup: convex combinations of example pairs and their labels"
    defaults = {"alpha": 1.0}

    def validate(self) -> None:
        self._require("alpha", lambda v: _is_num(v) and v > 0, "a number > 0")

    def training_loss(self, model, x, y):
        lam = _beta(float(self.params["alpha"]))
        perm = torch.randperm(x.shape[0], device=x.device)
        logits = model(lam * x + (1 - lam) * x[perm])
        loss = _mixed_ce(logits, y, y[perm], lam)
        return loss, {"loss": float(loss.detach()), "correct": _correct(logits, y)}


def _box(shape: torch.Size, side_fraction: float) -> tuple[slice, ...]:
    """A random box (a window for 1-D signals) covering ``side_fraction`` of each side, its
    centre uniform over the input and the box clipped at the border (CutMix / Cutout)."""
    spatial = shape[2:] if len(shape) >= 3 else shape[1:]
    slices = []
    for n in spatial:
        cut = int(round(n * side_fraction))
        c = int(torch.randint(n, ()))
        slices.append(slice(max(c - cut // 2, 0), min(c + cut - cut // 2, n)))
    return tuple(slices)


@register_method
class CutMix(Method):
    """CutMix (Yun et al. 2019): paste a box from another example, mix the labels by its area.
    alpha = 1 (lam ~ U(0, 1)) and probability 0.5 are their CIFAR settings
    (github.com/clovaai/CutMix-PyTorch: --beta 1.0 --cutmix_prob 0.5)."""

    name = "cutmix"
    description = "CutMix: paste a random box from another example, mix labels by area"
    defaults = {"alpha": 1.0, "p": 0.5}

    def validate(self) -> None:
        self._require("alpha", lambda v: _is_num(v) and v > 0, "a number > 0")
        self._require("p", lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]")

    def training_loss(self, model, x, y):
        if float(torch.rand(())) >= float(self.params["p"]):
            return super().training_loss(model, x, y)
        lam = _beta(float(self.params["alpha"]))
        perm = torch.randperm(x.shape[0], device=x.device)
        box = _box(x.shape, math.sqrt(1 - lam))
        index = (slice(None), slice(None), *box) if x.dim() >= 3 else (slice(None), *box)
        x = x.clone()
        x[index] = x[perm][index]
        area = math.prod(s.stop - s.start for s in box)
        total = math.prod(x.shape[2:] if x.dim() >= 3 else x.shape[1:])
        lam = 1 - area / total  # the exact pasted fraction, as in their code
        logits = model(x)
        loss = _mixed_ce(logits, y, y[perm], lam)
        return loss, {"loss": float(loss.detach()), "correct": _correct(logits, y)}


@register_method
class Cutout(Method):
    """Cutout (DeVries & Taylor 2017): zero a random square per example. Their CIFAR-10 length
    is 16 px on 32 px images, i.e. half the side; ``length`` None scales that to the input
    (14 px at 28 px, 4 px at 8 px). Applied to every example (their p = 1)."""

    name = "cutout"
    description = "Cutout: zero a random square (half the image side) in each training input"
    defaults = {"length": None}

    def validate(self) -> None:
        self._require("length", lambda v: v is None or (isinstance(v, int) and v > 0),
                      "a positive number of pixels, or null for half the side")

    def training_loss(self, model, x, y):
        spatial = x.shape[2:] if x.dim() >= 3 else x.shape[1:]
        length = self.params["length"]
        mask = torch.ones((x.shape[0], 1, *spatial) if x.dim() >= 3 else x.shape,
                          device=x.device, dtype=x.dtype)
        for i in range(x.shape[0]):
            # Each example its own square; centres anywhere, clipped at the border (as theirs).
            box = _box(x.shape, 0.5) if length is None else _box_len(spatial, int(length))
            mask[(i, slice(None), *box) if x.dim() >= 3 else (i, *box)] = 0
        return super().training_loss(model, x * mask, y)


def _box_len(spatial: torch.Size, length: int) -> tuple[slice, ...]:
    out = []
    for n in spatial:
        c = int(torch.randint(n, ()))
        out.append(slice(max(c - length // 2, 0), min(c + length - length // 2, n)))
    return tuple(out)
