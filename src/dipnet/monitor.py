"""Watching the learned variances: calibration of the initial value, statistics, and the
gradient of the data term against the barrier.

The question a DIPNet user must be able to answer at a glance is whether the variances learned
anything or stayed where they started (in which case the run is fixed Gaussian noise). These
helpers give the numbers; the experiment harness records them every epoch and the report plots
them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dipnet.batching import Batch
from dipnet.config import DIPConfig
from dipnet.inject import NotProjectedError, get_config, intercepted, projections
from dipnet.projection import GaussianProjection

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _require(model: nn.Module) -> dict[str, GaussianProjection]:
    projs = projections(model)
    if not projs:
        raise NotProjectedError("model has no DIPNet projections; call dipnet.project first.")
    return projs


def _feature_variance(x: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """Per-feature variance of ``x`` over every other axis (examples, positions, tokens)."""
    dim = feature_dim if feature_dim >= 0 else x.dim() + feature_dim
    flat = x.detach().float().movedim(dim, -1).reshape(-1, x.shape[dim])
    return flat.var(dim=0, unbiased=False) if flat.shape[0] > 1 else flat.pow(2).mean(0)


@torch.no_grad()
def activation_variances(model: nn.Module, inputs: Batch, **forward_kwargs: Any
                         ) -> dict[str, torch.Tensor]:
    """The per-feature variance of what each projection would see on ``inputs``.

    Runs one forward pass with every projection passing its input through unchanged (so each
    layer sees the clean activations of the current weights). BatchNorm running statistics and
    every other buffer are restored afterwards, so the call leaves the model as it was.

    Args:
        model: a projected model.
        inputs: a batch (tensor passed positionally, or a mapping passed as keywords).
        forward_kwargs: extra keyword arguments for the model.
    Returns:
        ``{host name: per-feature variance (num_features,)}``.
    Raises:
        NotProjectedError: if the model has no projections.
    """
    projs = _require(model)
    seen: dict[str, torch.Tensor] = {}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def capture(name: str, proj: GaussianProjection, x: torch.Tensor) -> torch.Tensor:
        seen[name] = _feature_variance(x, proj.feature_dim)
        return x

    try:
        with intercepted(model, capture):
            if isinstance(inputs, torch.Tensor):
                model(inputs, **forward_kwargs)
            else:
                model(**inputs, **forward_kwargs)
    finally:
        named = dict(model.named_buffers())
        for name, value in buffers.items():
            named[name].copy_(value)
    missing = sorted(set(projs) - set(seen))
    if missing:
        raise RuntimeError(f"projections on {missing[:3]} saw no input during the calibration "
                           "pass; the batch does not reach those layers.")
    return seen


@torch.no_grad()
def calibrate(model: nn.Module, inputs: Batch, scale: float | None = None,
              **forward_kwargs: Any) -> dict[str, float]:
    """Set each projection's variance to ``scale`` x the mean variance of its own input.

    This makes the initial noise the same fraction of the signal in every layer
    (`DIPConfig.init_scale`), instead of one absolute number that is large for a layer with small
    activations and negligible for one with large activations. The chosen value also becomes
    each projection's recorded initial variance.

    Args:
        model: a projected model (its weights as training will start from them).
        inputs: a batch of training inputs (a few hundred examples are plenty).
        scale: the fraction; default the config's ``init_scale``.
        forward_kwargs: extra keyword arguments for the model.
    Returns:
        ``{host name: the initial variance set}``.
    Raises:
        NotProjectedError: if the model has no projections.
        ValueError: no scale given and none in the config.
    """
    config: DIPConfig | None = get_config(model)
    if scale is None:
        scale = config.init_scale if config is not None else None
    if scale is None or not scale > 0:
        raise ValueError("calibrate needs scale > 0 (or a DIPConfig with init_scale set)")
    out: dict[str, float] = {}
    projs = projections(model)
    for name, var in activation_variances(model, inputs, **forward_kwargs).items():
        p = projs[name]
        # A layer whose inputs are constant on the batch (dead units) still needs a variance
        # above the floor for ln(lambda) to be finite.
        value = max(float(scale) * float(var.mean()), 10.0 * p.variance_floor)
        p.set_variance(value)
        p.calibrated = True
        out[name] = value
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every process saw its own batch: take rank 0's values so that replicas stay equal.
        for name, p in projs.items():
            torch.distributed.broadcast(p.raw_variance.data, src=0)
            p.init_variance = float(p.variance.detach().mean())
            out[name] = p.init_variance
    return out


def maybe_calibrate(model: nn.Module, inputs: Batch, config: DIPConfig | None = None,
                    **forward_kwargs: Any) -> bool:
    """`calibrate` the model if its config asks for it (``init_variance=None``) and no projection has
    been calibrated or trained yet; returns whether it calibrated.

    "Not trained yet" means every variance still holds exactly the value it was constructed
    with, so a model whose trained variances were loaded from a checkpoint is never reset.
    """
    config = config or get_config(model)
    if config is None or not config.relative_init:
        return False
    projs = projections(model)
    if not projs or any(p.calibrated for p in projs.values()):
        return False
    with torch.no_grad():
        untouched = all(torch.equal(p.raw_variance, p.raw_from_variance(p.init_variance).to(
            p.raw_variance.device)) for p in projs.values())
    if not untouched:
        for p in projs.values():
            p.calibrated = True  # trained values: keep them, and stop checking
        return False
    calibrate(model, inputs, config.init_scale, **forward_kwargs)
    return True


@torch.no_grad()
def variance_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per projection: mean, min, max and quantiles of lambda, its initial value, and how far it
    moved.

    Returns:
        ``{host name: {"mean", "min", "max", "q05", "q25", "q50", "q75", "q95", "init",
        "rel_change", "log10_std"}}``; ``rel_change`` is the mean over features of
        ``|lambda / lambda_init - 1|`` and ``log10_std`` the spread of log10(lambda) over
        features (0 when every feature holds the same value).
    Raises:
        NotProjectedError: if the model has no projections.
    """
    out: dict[str, dict[str, float]] = {}
    for name, p in _require(model).items():
        v = p.variance.detach().float().cpu()
        q = torch.quantile(v, torch.tensor(QUANTILES))
        row = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
        row.update({f"q{int(round(a * 100)):02d}": float(b) for a, b in zip(QUANTILES, q)})
        row["init"] = p.init_variance
        row["rel_change"] = float((v / p.init_variance - 1).abs().mean())
        row["log10_std"] = float(v.log10().std(unbiased=False)) if v.numel() > 1 else 0.0
        out[name or "<input>"] = row
    return out


@torch.no_grad()
def variance_histograms(model: nn.Module, bins: int = 30) -> dict[str, dict[str, list]]:
    """A histogram of log10(lambda) over the features of each projection.

    Returns:
        ``{host name: {"edges": [bins + 1 floats], "counts": [bins ints]}}``.
    """
    out: dict[str, dict[str, list]] = {}
    for name, p in _require(model).items():
        v = p.variance.detach().double().cpu().log10()
        lo, hi = float(v.min()), float(v.max())
        if hi - lo < 1e-6:  # all equal: one narrow bin around the value
            lo, hi = lo - 0.05, hi + 0.05
        counts = torch.histc(v, bins=bins, min=lo, max=hi)
        edges = torch.linspace(lo, hi, bins + 1)
        out[name or "<input>"] = {"edges": [float(e) for e in edges],
                                  "counts": [int(c) for c in counts]}
    return out


class VarianceGradientMeter:
    """Splits the gradient w.r.t. each lambda into the data term and the barrier.

    Call `update` after ``loss.backward()`` and before ``optimizer.step()``. The barrier's
    gradient is known in closed form, ``scale * (alpha - beta / lambda)`` per feature (``scale``
    = 1/N under the ELBO scaling, times 1/features under the per-layer mean), so the data term's
    gradient (NLL plus the stability penalty) is the total minus it: no second backward pass.
    At a balance the two cancel; a data gradient far above the barrier's says the variances are
    still being pushed.

    Args:
        config: the model's `DIPConfig`.
        num_train: the training-set size (for the ELBO scaling).
    """

    def __init__(self, config: DIPConfig, num_train: int | None = None) -> None:
        self.config = config
        self.num_train = num_train
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def _scale(self, p: GaussianProjection) -> float:
        s = 1.0
        if self.config.barrier_scaling == "elbo":
            s /= float(self.num_train or 1)
        if self.config.barrier_reduction == "mean":
            s /= p.num_features
        return s

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Accumulate this step's mean gradients (no-op for projections without a gradient)."""
        used = False
        for name, p in projections(model).items():
            grad = p.raw_variance.grad
            if grad is None:
                continue
            lam = p.variance.detach()
            total = grad / p.variance_derivative()  # d loss / d lambda
            alpha, beta = self.config.barrier_weights()
            bar = self._scale(p) * (alpha - beta / lam)
            data = total - bar
            # Kept as tensors: no device synchronisation per step on a GPU.
            step = torch.stack([data.mean(), bar.mean(), data.abs().mean()]).double()
            key = name or "<input>"
            self._sums[key] = self._sums[key] + step if key in self._sums else step
            used = True
        self._count += int(used)

    def summary(self, reset: bool = True) -> dict[str, dict[str, float]]:
        """Mean over the steps since the last reset: ``{layer: {"data", "barrier",
        "data_abs"}}`` (gradients w.r.t. lambda, averaged over features)."""
        n = max(self._count, 1)
        out = {}
        for k, v in self._sums.items():
            data, bar, data_abs = (float(x) / n for x in v.cpu())
            out[k] = {"data": data, "barrier": bar, "data_abs": data_abs}
        if reset:
            self._sums, self._count = {}, 0
        return out
