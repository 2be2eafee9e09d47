"""The noise of `GaussianProjection`: drawn from per-call seeds and regenerated in backward.

A projection computes ``u = x + std * eps``. The gradient of ``std`` is ``sum(eps * grad_u)``
over the non-feature axes, so plain autograd keeps ``eps`` (a tensor the size of the input) from
the forward pass to the backward pass. Here each call draws ``eps`` from a seed instead, keeps
only the seed, and draws the very same ``eps`` again in backward (`NoiseOptions.regenerate`).
The gradients are bit-identical to the stored-noise formulation for the same seed; the price is
one more normal draw per projected element in backward: on a GPU almost free, on a CPU about as
much time as the forward draw (13-35 % of a small MLP's step), which is why the default,
``"auto"``, regenerates on accelerators and keeps the noise on the CPU, where memory is rarely
what limits the batch. ``configure(regenerate=True)`` regenerates everywhere.

Where the consumer of ``u`` saves it (a Linear keeps its input for the weight gradient) and the
clean input ``x`` is kept anyway (the output of a ReLU, which ReLU's own backward keeps), ``u``
is saved as its recipe, ``x`` + seed, through `torch.autograd.graph.saved_tensors_hooks`, and
rebuilt bit for bit when backward needs it (`pack_inputs`). The clean and the noisy input then
no longer both stay alive.

Seeds come from torch's global CPU generator, so ``torch.manual_seed`` fixes every draw and a
run restored with its RNG state continues bit-identically. `DIPLoss` draws one base seed per
step and derives the seed of each projection call and each trajectory from it (`trajectories`),
so that a trajectory gets the same noise whether the m trajectories run in one pass or in
chunks (`DIPConfig.chunks`).

Under ``torch.compile`` (call `prepare_compile` first) there is no graph break. Where the noise
is regenerated, each call draws its seed from the global generator inside the graph, so a
compiled model draws the eager model's noise for the same ``torch.manual_seed``; where it is
kept (the CPU default), the graph draws it with ``randn_like``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterator

import torch

from dipnet.parameterization import VarianceMap

__all__ = ["NoiseOptions", "NoisePlan", "configure", "draw", "new_seed", "options", "perturb",
           "plan_for", "prepare_compile", "regenerates", "saved_tensor_bytes", "trajectories"]

_MASK64 = (1 << 64) - 1
_SEED_BOUND = (1 << 63) - 1

# Per autograd node type: does its backward keep the op's own result (ReLU, softmax, the fused
# attention kernels)? An input produced by such an op (or a view of it) is kept alive anyway, so
# saving a noisy copy next to it costs memory that its recipe does not. Only the type is looked
# at: reading the saved result could trigger another saved-tensor hook's unpack.
_KEEPS_RESULT: dict[type, bool] = {}


def _kept_anyway(x: torch.Tensor) -> bool:
    base = x._base if x._base is not None else x
    node = base.grad_fn
    if node is None:
        return False
    kind = type(node)
    keeps = _KEEPS_RESULT.get(kind)
    if keeps is None:
        names = dir(kind)
        keeps = _KEEPS_RESULT[kind] = "_saved_result" in names or "_saved_output" in names
    return keeps


@dataclasses.dataclass
class NoiseOptions:
    """How projections handle their noise in training (process-wide; see `configure`).

    Attributes:
        regenerate: True keeps the seed instead of the noise and draws it again in backward
            (less memory, one more draw); False keeps the noise tensor as plain autograd does;
            ``"auto"`` (default): True for tensors on an accelerator, False on the CPU.
        pack_inputs: save a noisy input that a layer keeps for backward as ``clean input +
            seed`` where the clean input is kept anyway (applies where noise is regenerated).
    """

    regenerate: bool | str = "auto"
    pack_inputs: bool = True


OPTIONS = NoiseOptions()


def configure(**changes: bool | str) -> NoiseOptions:
    """Change `OPTIONS` for the whole process; returns the previous options.

    Raises:
        TypeError: an unknown option name.
        ValueError: a value the option does not take.
    """
    known = {f.name for f in dataclasses.fields(NoiseOptions)}
    for name, value in changes.items():
        if name not in known:
            raise TypeError(f"unknown noise option {name!r}; known: {sorted(known)}")
        allowed = (True, False, "auto") if name == "regenerate" else (True, False)
        if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
            raise ValueError(f"noise option {name} takes {' / '.join(map(repr, allowed))}, "
                             f"got {value!r}")
    previous = dataclasses.replace(OPTIONS)
    for name, value in changes.items():
        setattr(OPTIONS, name, value)
    return previous


def regenerates(device: torch.device) -> bool:
    """Whether a projection's noise on ``device`` is drawn again in backward (`OPTIONS`)."""
    if OPTIONS.regenerate == "auto":
        return device.type != "cpu"
    return bool(OPTIONS.regenerate)


@contextlib.contextmanager
def options(**changes: bool | str) -> Iterator[NoiseOptions]:
    """Use other `NoiseOptions` inside a ``with`` block (e.g. ``options(regenerate=False)``)."""
    previous = configure(**changes)
    try:
        yield OPTIONS
    finally:
        configure(**dataclasses.asdict(previous))


def prepare_compile() -> None:
    """Call before ``torch.compile`` of a projected model: settings it needs to be right and fast.

    - Guards on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards = False``): a
      projection hooks itself in only while it samples, and without these guards a model
      compiled in eval mode keeps its compiled graph under `dipnet.sampling` (no noise at all),
      and two compiled functions of one code object can share a graph although only one of
      their models is projected (both measured).
    - ``torch._inductor.config.fallback_random = True``: inductor's in-kernel CPU random number
      generator is several times slower than ATen's.
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    dynamo_config.skip_nnmodule_hook_guards = False
    inductor_config.fallback_random = True


# ---------------------------------------------------------------------- seeds
def new_seed() -> int:
    """A 63-bit seed from torch's global CPU generator (``torch.manual_seed`` fixes it)."""
    return int(torch.randint(0, _SEED_BOUND, (), dtype=torch.int64))


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(base: int, *keys: int) -> int:
    """A seed for ``keys`` (call index, trajectory) under ``base``; distinct keys give
    independent-looking seeds (splitmix64 mixing)."""
    h = base & _MASK64
    for k in keys:
        h = _splitmix64(h ^ (k & _MASK64))
    return h & _SEED_BOUND


@dataclasses.dataclass(frozen=True)
class NoisePlan:
    """Which seeds one projection call draws its noise from.

    Attributes:
        seeds: one seed for the whole tensor, or one per equal block of rows along axis 0
            (one block per trajectory under `trajectories`).
    """

    seeds: tuple[int, ...]


class _Local(threading.local):
    def __init__(self) -> None:
        self.generators: dict[tuple[str, int | None], torch.Generator | None] = {}
        self.context: _Trajectories | None = None
        self.scopes: list[tuple[Any, Any]] = []


_local = _Local()


@dataclasses.dataclass
class _Trajectories:
    base: int
    first: int
    count: int
    calls: int = 0


@contextlib.contextmanager
def trajectories(base_seed: int, first: int = 0, count: int = 1) -> Iterator[None]:
    """Draw the projections' noise for trajectories ``first .. first + count - 1`` of a step.

    Inside the block, the i-th projection call draws trajectory j's rows (block j of axis 0,
    when axis 0 splits into ``count`` equal blocks) from ``derive_seed(base_seed, i, j)``: the
    same numbers whichever chunk the trajectory runs in. An input whose axis 0 does not split
    into ``count`` blocks gets one seed for the whole tensor.

    Args:
        base_seed: the step's seed (`new_seed`).
        first: index of the first trajectory in this pass.
        count: trajectories stacked on axis 0 in this pass.
    """
    previous = _local.context
    _local.context = _Trajectories(int(base_seed), int(first), int(count))
    try:
        yield
    finally:
        _local.context = previous


def plan_for(x: torch.Tensor) -> NoisePlan:
    """The seeds for one projection call on ``x`` (see `trajectories`)."""
    ctx = _local.context
    if ctx is None:
        return NoisePlan((new_seed(),))
    call = ctx.calls
    ctx.calls += 1
    if ctx.count == 1:
        return NoisePlan((derive_seed(ctx.base, call, ctx.first),))
    if x.dim() > 0 and x.shape[0] % ctx.count == 0:
        return NoisePlan(tuple(derive_seed(ctx.base, call, ctx.first + j)
                               for j in range(ctx.count)))
    return NoisePlan((derive_seed(ctx.base, call, -1 - ctx.first),))


def _generator(device: torch.device) -> torch.Generator | None:
    key = (device.type, device.index)
    gens = _local.generators
    if key not in gens:
        try:
            gens[key] = torch.Generator(device=device)
        except RuntimeError:  # a backend without its own generators: plain randn_like
            gens[key] = None
    return gens[key]


def draw(shape: torch.Size | tuple[int, ...], plan: NoisePlan, dtype: torch.dtype,
         device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape`` from ``plan``'s seeds (the same numbers every call).

    Raises:
        RuntimeError: ``device`` has no seedable generator.
    """
    gen = _generator(device)
    if gen is None:
        raise RuntimeError(f"no torch.Generator for device {device}")
    out = torch.empty(shape, dtype=dtype, device=device)
    seeds = plan.seeds
    if len(seeds) == 1:
        gen.manual_seed(seeds[0])
        out.normal_(generator=gen)
        return out
    rows = shape[0] // len(seeds)
    for j, seed in enumerate(seeds):
        gen.manual_seed(seed)
        out[j * rows:(j + 1) * rows].normal_(generator=gen)
    return out


# ---------------------------------------------------------------------- autograd
class _Rebuild:
    """What rebuilds a projection's output u in backward: its clean input and its seeds. It
    also carries the noise from the rebuild to the projection's own backward, which follows."""

    __slots__ = ("x", "x_version", "std", "plan", "u_ptr", "u_version", "u_dtype", "u", "eps")

    def __init__(self, x: torch.Tensor, std: torch.Tensor, plan: NoisePlan) -> None:
        self.x = x
        self.x_version = x._version
        self.std = std
        self.plan = plan
        self.u_ptr = 0
        self.u_version = -1
        self.u_dtype = x.dtype
        self.u: torch.Tensor | None = None
        self.eps: torch.Tensor | None = None

    def materialise(self) -> torch.Tensor:
        if self.u is None:
            if self.x._version != self.x_version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by "
                    "an inplace operation: the clean input of a DIPNet projection changed after "
                    "the forward pass")
            x = self.x
            if torch.is_grad_enabled():
                # create_graph=True (double backward): u rebuilt with its graph to x and std.
                self.u = _Perturb.apply(x, self.std, self.plan, None)
            else:
                eps = draw(x.shape, self.plan, x.dtype, x.device)
                self.u = torch.addcmul(x, eps, self.std)
                self.eps = eps  # the projection's own backward, next, needs it too
        return self.u

    def release(self) -> None:
        self.u = None
        self.eps = None


class _Packed:
    __slots__ = ("rebuild", "size", "stride", "offset")

    def __init__(self, rebuild: _Rebuild, t: torch.Tensor) -> None:
        self.rebuild = rebuild
        self.size = t.size()
        self.stride = t.stride()
        self.offset = t.storage_offset()


def _unpack(obj: Any) -> Any:
    if isinstance(obj, _Packed):
        u = obj.rebuild.materialise()
        return u.as_strided(obj.size, obj.stride, obj.offset)
    return obj


class _Perturb(torch.autograd.Function):
    """u = x + std * eps with eps drawn from ``plan``; backward draws eps again."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, std: torch.Tensor, plan: NoisePlan,
                rebuild: _Rebuild | None) -> torch.Tensor:
        eps = draw(x.shape, plan, x.dtype, x.device)
        ctx.plan = plan
        ctx.std_shape = std.shape
        ctx.x_meta = (x.shape, x.dtype, x.device)
        ctx.rebuild = rebuild
        # The same kernel as the stored-noise formulation, so u is bit-identical.
        return torch.addcmul(x, eps, std)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        rebuild: _Rebuild | None = ctx.rebuild
        grad_std = None
        if ctx.needs_input_grad[1]:
            eps = rebuild.eps if rebuild is not None else None
            if eps is None:
                shape, dtype, device = ctx.x_meta
                eps = draw(shape, ctx.plan, dtype, device)
            # addcmul's own derivative, grad * eps summed to std's broadcast shape.
            grad_std = (grad * eps).sum_to_size(ctx.std_shape)
        if rebuild is not None:
            rebuild.release()
        return (grad if ctx.needs_input_grad[0] else None), grad_std, None, None


def _outer_hooks() -> tuple[bool, Any]:
    # (free, outer): packing may start when no saved-tensor hooks are in force, or only an
    # observer's (`saved_tensor_bytes`), which it then passes every other tensor to. Someone
    # else's hooks (activation checkpointing, CPU offloading) decide alone what is saved.
    autograd = torch._C._autograd
    top = getattr(autograd, "_top_saved_tensors_default_hooks", None)
    enabled = getattr(autograd, "_saved_tensors_hooks_is_enabled", None)
    if top is None or enabled is None or not enabled():
        return False, None
    outer = top(False)
    if outer is None:
        return True, None
    return bool(getattr(outer[0], "_dipnet_observer", False)), outer


def saved_tensor_bytes(fn: Any, exclude: Any = (), observer: bool = True) -> tuple[int, Any]:
    """Bytes autograd saves for backward while ``fn()`` runs: unique storages, counted once.

    Args:
        fn: a callable that runs a forward pass (and returns, e.g., its loss).
        exclude: tensors whose storages do not count (the parameters).
        observer: True counts beneath dipnet's packing; False counts as a user's own hooks
            would see it (activation offloading): dipnet then packs nothing.
    Returns:
        ``(bytes, fn())``.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    pack._dipnet_observer = observer  # type: ignore[attr-defined]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def perturb(x: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, _Rebuild | None]:
    """``x + std * eps`` with fresh standard normal eps (std broadcasts against x).

    Args:
        x: the clean input.
        std: the noise standard deviations, shaped to broadcast against ``x``.
    Returns:
        ``(u, rebuild)``: the noisy input, and (when `OPTIONS.pack_inputs` applies) the recipe
        that `packing_scope` saves in place of ``u``; else None.
    """
    if torch.compiler.is_compiling():
        return _compiled_perturb(x, std), None
    if _generator(x.device) is None:
        return torch.addcmul(x, torch.randn_like(x), std), None
    plan = plan_for(x)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or std.requires_grad)
    if not needs_grad or not regenerates(x.device):
        # No backward (or the stored-noise formulation): autograd keeps eps if it needs it.
        return torch.addcmul(x, draw(x.shape, plan, x.dtype, x.device), std), None
    rebuild = None
    if (OPTIONS.pack_inputs and x.numel() > 0 and _kept_anyway(x)
            and _outer_hooks()[0]):
        rebuild = _Rebuild(x, std, plan)
    u = _Perturb.apply(x, std, plan, rebuild)
    if rebuild is not None:
        rebuild.u_ptr = u.untyped_storage().data_ptr()
        rebuild.u_version = u._version
        rebuild.u_dtype = u.dtype
    return u, rebuild


def packing_scope(rebuild: _Rebuild) -> Any:
    """Saved-tensor hooks that save any view of the rebuild's output as its recipe (entered for
    the forward of the layer that consumes it; tensors that are not that output pass through).
    """
    outer = _outer_hooks()[1]

    def pack(t: torch.Tensor) -> Any:
        if (t.dtype == rebuild.u_dtype and t._version == rebuild.u_version
                and t.untyped_storage().data_ptr() == rebuild.u_ptr):
            return _Packed(rebuild, t)
        return t if outer is None else outer[0](t)

    if outer is None:
        return torch.autograd.graph.saved_tensors_hooks(pack, _unpack)

    def unpack(obj: Any) -> Any:
        return _unpack(obj) if isinstance(obj, _Packed) else outer[1](obj)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def enter_scope(owner: Any, rebuild: _Rebuild) -> None:
    """Enter `packing_scope` for ``owner``'s forward (left by `exit_scope`)."""
    scope = packing_scope(rebuild)
    scope.__enter__()
    _local.scopes.append((owner, scope))


def exit_scope(owner: Any) -> None:
    """Leave the scope `enter_scope` opened for ``owner``, if it is the innermost one."""
    scopes = _local.scopes
    if scopes and scopes[-1][0] is owner:
        scopes.pop()[1].__exit__(None, None, None)


# ---------------------------------------------------------------------- torch.compile
# Under torch.compile (no graph break in either formulation):
# - Where the noise is regenerated (accelerators): the projection is one opaque custom op (and
#   the gradient of std another); the noise comes from a seed the graph draws from the global
#   generator (the eager noise for the same seed), and only the seed is kept for backward.
# - Where the noise is kept (the CPU default): randn_like + addcmul, traced, in an autograd
#   function whose backward computes the gradient of std with an opaque op that also takes the
#   clean input x. That keeps x, the output of the ReLU (or softmax, ...) before the
#   projection, for backward, so inductor's partitioner recomputes the ReLU mask from it in
#   backward instead of storing it as a bool tensor: on the CPU of this project inductor's
#   vectorised kernels that store or load a bool mask run at ~10 ns per element, 20-100x
#   ATen's, and made the compiled step 1.24x slower than eager. Eager keeps x too (ReLU saves
#   its output), so this costs no memory over eager.
@torch.library.custom_op("dipnet::perturb", mutates_args=())
def _perturb_op(x: torch.Tensor, std: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    eps = draw(x.shape, NoisePlan((int(seed),)), x.dtype, x.device)
    return torch.addcmul(x, eps, std)


@_perturb_op.register_fake
def _perturb_fake(x: torch.Tensor, std: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("dipnet::perturb_std_grad", mutates_args=())
def _std_grad_op(grad: torch.Tensor, seed: torch.Tensor, std_shape: list[int]) -> torch.Tensor:
    eps = draw(grad.shape, NoisePlan((int(seed),)), grad.dtype, grad.device)
    return (grad * eps).sum_to_size(std_shape)


@_std_grad_op.register_fake
def _std_grad_fake(grad: torch.Tensor, seed: torch.Tensor, std_shape: list[int]
                   ) -> torch.Tensor:
    return grad.new_empty(std_shape)


def _perturb_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    _, std, seed = inputs
    ctx.std_shape = list(std.shape)
    ctx.save_for_backward(seed)


def _perturb_backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    (seed,) = ctx.saved_tensors
    grad_std = _std_grad_op(grad, seed, ctx.std_shape) if ctx.needs_input_grad[1] else None
    return grad, grad_std, None


_perturb_op.register_autograd(_perturb_backward, setup_context=_perturb_setup)


def _variance_map(floor: float, softplus: bool) -> VarianceMap:
    # The op takes plain types (a custom op's schema): rebuild the map from them.
    return VarianceMap("softplus" if softplus else "exp", floor)


@torch.library.custom_op("dipnet::noise_std", mutates_args=())
def _noise_std(raw: torch.Tensor, floor: float, softplus: bool) -> torch.Tensor:
    return _variance_map(floor, softplus).variance(raw).sqrt()


@_noise_std.register_fake
def _noise_std_fake(raw: torch.Tensor, floor: float, softplus: bool) -> torch.Tensor:
    return torch.empty_like(raw)


def _noise_std_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.vmap = _variance_map(inputs[1], inputs[2])
    ctx.save_for_backward(inputs[0], output)


def _noise_std_backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
    raw, std = ctx.saved_tensors
    return grad * ctx.vmap.derivative(raw) / (2 * std), None, None


_noise_std.register_autograd(_noise_std_backward, setup_context=_noise_std_setup)


def compiled_std(raw: torch.Tensor, floor: float, parameterization: str) -> torch.Tensor:
    """sqrt(variance) from the raw parameters as one opaque op, for ``torch.compile``: inductor
    would otherwise fuse exp / softplus and sqrt (and their derivatives) into the per-element
    kernels around the noise and evaluate them once per element instead of once per feature."""
    return _noise_std(raw, float(floor), parameterization == "softplus")


@torch.library.custom_op("dipnet::perturb_kept_std_grad", mutates_args=())
def _kept_std_grad_op(grad: torch.Tensor, eps: torch.Tensor, x: torch.Tensor,
                      std_shape: list[int]) -> torch.Tensor:
    # x is not read: taking it keeps it for backward (see the note above the ops).
    return (grad * eps).sum_to_size(std_shape)


@_kept_std_grad_op.register_fake
def _kept_std_grad_fake(grad: torch.Tensor, eps: torch.Tensor, x: torch.Tensor,
                        std_shape: list[int]) -> torch.Tensor:
    return grad.new_empty(std_shape)


class _KeptPerturb(torch.autograd.Function):
    """``x + eps * std`` with eps given, for torch.compile where the noise is kept: dynamo
    traces it (inductor fuses the addcmul with its neighbours) and its backward hands x to the
    opaque gradient op, so x is kept for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, eps: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, eps)
        ctx.std_shape = list(std.shape)
        return x.addcmul(eps, std)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, eps = ctx.saved_tensors
        grad_std = (_kept_std_grad_op(grad, eps, x, ctx.std_shape) if ctx.needs_input_grad[2]
                    else None)
        return grad, None, grad_std


def _compiled_perturb(x: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if not regenerates(x.device):
        # randn_like, not a seeded custom op: one opaque op less per call (each costs tens of
        # microseconds on a CPU); with fallback_random it is ATen's generator. Contiguous:
        # inductor lays conv activations out channels-last, and ATen's CPU normal_ is
        # vectorised only for contiguous tensors (measured 8x slower otherwise).
        return _KeptPerturb.apply(x, torch.randn_like(x, memory_format=torch.contiguous_format),
                                  std)
    seed = torch.randint(0, _SEED_BOUND, (), dtype=torch.int64)  # from the global generator
    return _perturb_op(x, std, seed)
