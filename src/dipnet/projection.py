"""`GaussianProjection`: the learned distribution u ~ N(v, diag(lambda)) in front of one layer."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from dipnet import misuse, noise
from dipnet.parameterization import DEFAULT_FLOOR, DEFAULT_PARAMETERIZATION, VarianceMap

# The name under which a projection is attached to its host module. Original parameters and
# their state_dict keys are untouched; the projection adds "<host>.dip_projection.raw_variance".
ATTR = "dip_projection"

# "check" validates every input like "sample" but adds no noise (dipnet.predict with k = 0 uses
# it, so a bad input gives the same error whatever k is).
Mode = Literal["auto", "sample", "off", "check"]


class ProjectionShapeError(ValueError):
    """A projected layer received an input whose feature axis does not match the projection."""


class GaussianProjection(nn.Module):
    """One learned Gaussian input projection: ``u = v + sqrt(lambda) * eps``, eps ~ N(0, I).

    ``lambda`` holds one variance per input feature (channel of a conv, hidden unit of a token
    stream), shared over examples, positions and tokens, independent of the input.

    The projection is attached to its host layer as a child module (so its parameter is in the
    host's state_dict and moves with ``.to()``) and acts through a forward pre-hook on the host,
    or a forward hook for ``on="output"`` (the embedding output of a token model).

    NB: the hook is registered only while the projection samples. In ``eval()`` mode (and under
    `dipnet.deterministic`) it is removed, so a projected model in eval mode runs exactly the
    code path of the original model, with no per-call hook overhead. ``train()``/``eval()`` on
    any ancestor reaches this module and re-synchronises the hook.

    Args:
        num_features: number of features (size of the feature axis).
        feature_dim: the axis of the input that holds the features (1 for conv inputs, -1 for
            Linear inputs and token streams).
        init_variance, parameterization, variance_floor: see `DIPConfig` (the same defaults:
            `dipnet.parameterization`).
        on: ``"input"`` (project the host's first input) or ``"output"`` (project its output).
        batched_ndim: for a conv host, the number of axes of a batched input (3 for Conv1d):
            an input with one axis fewer is unbatched and holds its features on axis 0.
    Raises:
        ValueError: ``num_features < 1``, ``variance_floor <= 0`` or an unknown
            parameterization.

    The variances stay float32 when the model is cast to half precision (``model.half()``,
    ``model.to(torch.bfloat16)``): they are small numbers whose logarithm enters the loss.
    Device moves, and casts to float64, apply as usual.
    """

    def __init__(
        self,
        num_features: int,
        feature_dim: int = -1,
        init_variance: float = 1e-2,
        parameterization: str = DEFAULT_PARAMETERIZATION,
        variance_floor: float = DEFAULT_FLOOR,
        on: str = "input",
        batched_ndim: int | None = None,
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        VarianceMap.of(parameterization, variance_floor)  # raises for a bad pair
        self.batched_ndim = batched_ndim
        self.num_features = int(num_features)
        self.feature_dim = int(feature_dim)
        self.parameterization = parameterization
        self.variance_floor = float(variance_floor)
        self.on = on
        self.raw_variance = nn.Parameter(torch.empty(num_features))
        # The value training started from, kept (as a plain float, not state) so that
        # monitoring can say how far each variance moved; `set_variance` updates it.
        self.init_variance = float(init_variance)
        self.set_variance(init_variance)
        # True once `dipnet.calibrate` has set the initial variance from the data.
        self.calibrated = False
        self.mode: Mode = "auto"
        # Set by `attach`; kept in __dict__ (not _modules) so the host is not a child of its
        # own projection. deepcopy/pickle follow it through the memo, so copies stay consistent.
        object.__setattr__(self, "_host", None)
        # Shared by the projections of one model (`dipnet.misuse`); set by `dipnet.project`.
        object.__setattr__(self, "_guard", None)

    # ------------------------------------------------------------------ variances
    @property
    def variance_map(self) -> VarianceMap:
        """The raw <-> lambda map of this projection (its parameterization and floor)."""
        return VarianceMap.of(self.parameterization, self.variance_floor)

    @property
    def variance(self) -> torch.Tensor:
        """The current per-feature variances lambda (differentiable), shape (num_features,)."""
        return self.variance_of(self.raw_variance)

    def variance_of(self, raw: torch.Tensor) -> torch.Tensor:
        """The variances that raw parameter values ``raw`` give under this projection's
        parameterization and floor (differentiable; `dipnet.barrier` applies it to the raw
        parameters of several layers at once)."""
        return self.variance_map.variance(raw)

    def raw_from_variance(self, variance: torch.Tensor | float) -> torch.Tensor:
        """The raw parameter value that gives ``variance`` (a float or a per-feature tensor).

        Raises:
            ValueError: a variance not above ``variance_floor``.
        """
        v = torch.as_tensor(variance, dtype=torch.float32).expand(self.num_features)
        return self.variance_map.raw(v)

    @torch.no_grad()
    def set_variance(self, variance: torch.Tensor | float, as_init: bool = True) -> None:
        """Set lambda to ``variance`` (a float for every feature, or one per feature).

        Args:
            variance: the new variance(s), each above ``variance_floor``.
            as_init: also record it as the initial variance that monitoring compares with (the
                mean, for a per-feature tensor), and mark the projection as calibrated, so that
                `DIPLoss` does not replace the value on its first batch.
        """
        raw = self.raw_from_variance(variance).to(self.raw_variance.device)
        self.raw_variance.copy_(raw)
        if as_init:
            self.init_variance = float(torch.as_tensor(variance, dtype=torch.float64).mean())
            # An explicitly chosen start: the first-batch calibration must not replace it.
            self.calibrated = True

    def variance_derivative(self) -> torch.Tensor:
        """d lambda / d raw per feature (detached): sigmoid(raw) for softplus, exp(raw) for exp."""
        with torch.no_grad():
            return self.variance_map.derivative(self.raw_variance)

    @property
    def log_variance(self) -> torch.Tensor:
        """ln(lambda), differentiable."""
        return torch.log(self.variance)

    def variance_summary(self) -> dict[str, float]:
        """Mean, min and max of the current variances as plain floats."""
        with torch.no_grad():
            v = self.variance
            return {"mean": v.mean().item(), "min": v.min().item(), "max": v.max().item()}

    def extra_repr(self) -> str:
        s = self.variance_summary()
        return (
            f"num_features={self.num_features}, feature_dim={self.feature_dim}, on={self.on}, "
            f"variance_mean={s['mean']:.3g}"
        )

    # ------------------------------------------------------------------ sampling
    @property
    def sampling(self) -> bool:
        """Whether this projection currently draws noise."""
        if self.mode == "sample":
            return True
        if self.mode == "off":
            return False
        return self.training

    def feature_axis(self, x: torch.Tensor) -> int:
        """The axis of ``x`` that holds the features (0 for an unbatched conv input).

        Raises:
            ProjectionShapeError: if ``x`` is not floating point, or that axis does not have
                ``num_features`` entries.
        """
        if not torch.is_floating_point(x):
            raise ProjectionShapeError(
                f"DIPNet projection got a {x.dtype} tensor; token ids cannot be projected. "
                "Project the embedding output instead (placement='input' or 'blocks')."
            )
        feature_dim = self.feature_dim
        # getattr: a projection pickled before batched_ndim existed has no such attribute.
        batched = getattr(self, "batched_ndim", None)
        if batched is not None and x.dim() == batched - 1:
            # A conv layer also takes one unbatched example (C, L...): its channels are axis 0.
            feature_dim = 0
        dim = feature_dim if feature_dim >= 0 else x.dim() + feature_dim
        if x.dim() == 0 or not 0 <= dim < x.dim() or x.shape[dim] != self.num_features:
            # The batch axis is shown as N: under m / k trajectories it holds m*B rows, a
            # number the user never passed.
            shape = [str(s) for s in x.shape]
            if x.dim() >= 2 and dim != 0:
                shape[0] = "N"
            got = (f"{x.shape[dim]}" if x.dim() and 0 <= dim < x.dim()
                   else f"a {x.dim()}-d input")
            raise ProjectionShapeError(
                f"DIPNet projection expected {self.num_features} features on axis "
                f"{feature_dim}, got {got} (input shape ({', '.join(shape)})); pass inputs "
                "shaped like the ones the model was built for."
            )
        return dim

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + sqrt(lambda) * eps`` with fresh independent noise for every element.

        The noise comes from a seed drawn from torch's global generator (``torch.manual_seed``
        fixes it) and, in training, is drawn again in backward instead of being kept
        (`dipnet.noise`).

        Raises:
            ProjectionShapeError: if ``x``'s feature axis does not have ``num_features`` entries.
        """
        dim = self.feature_axis(x)
        if torch.compiler.is_compiling():
            std = noise.compiled_std(self.raw_variance, self.variance_floor,
                                     self.parameterization).to(x.dtype)
        else:
            std = self.variance.sqrt().to(x.dtype)
        if dim != x.dim() - 1:  # features on the last axis broadcast as they are
            shape = [1] * x.dim()
            shape[dim] = self.num_features
            std = std.view(shape)
        u, rebuild = noise.perturb(x, std)
        if rebuild is not None:
            # The hook that called us saves u as its recipe during the host's forward.
            self.__dict__["_rebuild"] = (u, rebuild)
        return u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` if sampling, else return it unchanged."""
        if not self.sampling:
            return x
        u = self.project(x)
        self.__dict__.pop("_rebuild", None)  # no host forward to pack for
        return u

    def _hooked(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mode == "auto" and not torch.compiler.is_compiling():
            misuse.training_pass(self)  # a plain loop's silent mistakes, warned once
        if self.sampling:
            return self.project(x)
        self.feature_axis(x)  # "check" mode: the same validation, no noise
        return x

    def _apply(self, fn: Any, recurse: bool = True) -> "GaussianProjection":
        # Module.to / half / bfloat16 reach the variances through this; a cast below float32
        # is dropped (the device move in it is kept).
        def keep_precision(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if (isinstance(out, torch.Tensor) and t.is_floating_point()
                    and out.is_floating_point() and out.dtype != t.dtype
                    and torch.finfo(out.dtype).bits < 32):
                wide = t.dtype if torch.finfo(t.dtype).bits >= 32 else torch.float32
                return t.to(device=out.device, dtype=wide, copy=True)
            return out

        return super()._apply(keep_precision, recurse)

    # ------------------------------------------------------------------ hooks
    def _enter_packing(self, module: nn.Module, u: torch.Tensor) -> None:
        # u came with a recipe (clean input + seed): while the host runs, any saved copy of u
        # is kept as that recipe; `_post_input_hook` leaves the scope.
        pending = self.__dict__.pop("_rebuild", None)
        if pending is not None and pending[0] is u:
            noise.enter_scope(module, pending[1])

    def _post_input_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        noise.exit_scope(module)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            first = args[0]
            if isinstance(first, torch.Tensor):
                u = self._hooked(first)
                self._enter_packing(module, u)
                # Same tensor passed several times (self-attention's query, key, value) gets the
                # same sample: it is one input, projected once.
                new_args = tuple(u if a is first else a for a in args)
                new_kwargs = {k: (u if v is first else v) for k, v in kwargs.items()}
                return new_args, new_kwargs
            raise ProjectionShapeError(
                f"DIPNet projection on {type(module).__name__}: its first input is a "
                f"{type(first).__name__}, not a tensor; target a module that takes a tensor."
            )
        for key in ("hidden_states", "x", "input", "inputs_embeds", "pixel_values", "src"):
            value = kwargs.get(key)
            if isinstance(value, torch.Tensor) and torch.is_floating_point(value):
                kwargs = dict(kwargs)
                kwargs[key] = self._hooked(value)
                self._enter_packing(module, kwargs[key])
                return args, kwargs
        raise ProjectionShapeError(
            f"DIPNet projection on {type(module).__name__}: no tensor input found "
            f"(keyword arguments: {sorted(kwargs)})."
        )

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            u = self._hooked(output)
            self.__dict__.pop("_rebuild", None)  # the consumer is not ours to wrap
            return u
        raise ProjectionShapeError(
            f"DIPNet output projection on {type(module).__name__}: output is a "
            f"{type(output).__name__}, not a tensor."
        )

    def _hook_fn(self) -> Any:
        return self._post_hook if self.on == "output" else self._pre_hook

    def _registered(self, host: nn.Module) -> bool:
        store = host._forward_hooks if self.on == "output" else host._forward_pre_hooks
        return any(getattr(h, "__self__", None) is self for h in store.values())

    def _unregister(self, host: nn.Module) -> None:
        stores = [host._forward_hooks, host._forward_pre_hooks]
        for store in stores:
            for key in [k for k, h in store.items() if getattr(h, "__self__", None) is self]:
                del store[key]
                host._forward_hooks_with_kwargs.pop(key, None)
                host._forward_pre_hooks_with_kwargs.pop(key, None)
                host._forward_hooks_always_called.pop(key, None)

    def sync_hook(self) -> None:
        """Register the hook on the host if the projection samples, remove it otherwise."""
        host = self._host
        if host is None:
            return
        want = self.sampling or self.mode == "check"
        has = self._registered(host)
        if want and not has:
            if self.on == "output":
                host.register_forward_hook(self._post_hook)
            else:
                host.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
                # always_call: the packing scope is left even if the host raises.
                host.register_forward_hook(self._post_input_hook, always_call=True)
        elif has and not want:
            self._unregister(host)

    def set_mode(self, mode: Mode) -> None:
        """``"auto"`` samples in train mode only; ``"sample"`` always; ``"off"`` never;
        ``"check"`` never, but validates each input as a sampling pass would."""
        if mode not in ("auto", "sample", "off", "check"):
            raise ValueError(f"mode must be 'auto', 'sample', 'off' or 'check', got {mode!r}")
        self.mode = mode
        self.sync_hook()

    def train(self, mode: bool = True) -> "GaussianProjection":
        super().train(mode)
        self.sync_hook()
        return self

    def attach(self, host: nn.Module) -> None:
        """Make this projection the child ``dip_projection`` of ``host`` and hook it in."""
        host.add_module(ATTR, self)
        object.__setattr__(self, "_host", host)
        self.train(host.training)

    def detach(self) -> None:
        """Unhook from the host and remove the child; the host is as before `attach`."""
        host = self._host
        if host is None:
            return
        self._unregister(host)
        if getattr(host, ATTR, None) is self:
            delattr(host, ATTR)
        object.__setattr__(self, "_host", None)
