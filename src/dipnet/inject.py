"""Insert projections into a model, find them, switch their mode, and take them out again."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from dipnet.config import DIPConfig
from dipnet._util.fileio import atomic_write_safetensors
from dipnet.misuse import Guard
from dipnet.parameterization import VarianceMap
from dipnet.projection import ATTR, GaussianProjection
from dipnet.targeting import resolve_targets

_CONFIG_ATTR = "_dipnet_config"


class AlreadyProjectedError(RuntimeError):
    """`project` was called on a model that already holds DIPNet projections."""


class NotProjectedError(RuntimeError):
    """An operation needs DIPNet projections but the model has none."""


class ProjectionFileError(ValueError):
    """A projections file is missing, corrupt, or does not fit the model."""


VARIANCE_KEY = f"{ATTR}.raw_variance"


def require_module(obj: Any, caller: str) -> None:
    """Refuse anything but a ``torch.nn.Module`` as the model of ``caller``.

    Raises:
        TypeError: one line naming what was given and what is expected.
    """
    if not isinstance(obj, nn.Module):
        raise TypeError(f"{caller}: the model must be a torch.nn.Module, got "
                        f"{type(obj).__name__} {_short(obj)}; build the model first "
                        "(e.g. torchvision.models.resnet18()) and pass the module itself.")


def require_state_dict(obj: Any, caller: str) -> None:
    """Refuse anything but a mapping of names to tensors as the state_dict of ``caller``.

    Raises:
        TypeError: one line naming what was given (or the first entry that is no tensor).
    """
    if isinstance(obj, nn.Module):
        raise TypeError(f"{caller}: got a model where a state_dict is expected; pass "
                        "model.state_dict() instead.")
    if not isinstance(obj, Mapping):
        raise TypeError(f"{caller}: the state_dict must be a mapping of names to tensors "
                        f"(model.state_dict() or torch.load(file)), got {type(obj).__name__} "
                        f"{_short(obj)}.")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{caller}: state_dict entry {key!r} is a {type(value).__name__}, "
                            "not a tensor; pass model.state_dict() (or torch.load(file)).")


def _short(obj: Any) -> str:
    text = repr(obj).replace("\n", " ")
    return f"({text[:60]}...)" if len(text) > 60 else f"({text})"


def _variance_rule(key: str, model: nn.Module | None, config: DIPConfig | None
                   ) -> tuple[str, float]:
    """(parameterization, floor) that turn the raw variances under ``key`` into variances."""
    host = key[: -len(VARIANCE_KEY)].rstrip(".")
    proj = projections(model).get(host) if model is not None else None
    if proj is not None:
        return proj.parameterization, proj.variance_floor
    config = config or (get_config(model) if model is not None else None) or DIPConfig()
    return config.parameterization, config.variance_floor


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor], model: nn.Module | None = None,
                      config: DIPConfig | None = None) -> list[str]:
    """The finiteness rule of every file that enters or leaves dipnet (weights and variances).

    A floating-point tensor must hold only finite values; a DIPNet raw variance (a key ending in
    ``dip_projection.raw_variance``) must also give a finite variance under its projection's
    parameterization (an ``exp`` raw value of 200 is finite, its variance is not). Integer
    tensors (step counters) cannot hold NaN and are not checked.

    Args:
        tensors: name -> tensor (a state_dict, or the tensors of a file).
        model: where the projections' parameterization is read from, when it holds them.
        config: the parameterization for variances the model does not (yet) hold; default the
            model's config, else ``DIPConfig()``.
    Returns:
        One ``"key (n of N)"`` entry per tensor that breaks the rule; empty if none does.
    """
    bad = []
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        t = t.detach()
        wrong = ~torch.isfinite(t)
        if key == VARIANCE_KEY or key.endswith("." + VARIANCE_KEY):
            parameterization, floor = _variance_rule(key, model, config)
            # The variance the projection would compute (the one raw -> lambda map), so an
            # exp-parameterised raw value of 200 (e^200 = inf in float32) is refused too.
            variance = VarianceMap.of(parameterization, floor).variance(t.to(torch.float32))
            wrong = wrong | ~torch.isfinite(variance)
        count = int(wrong.sum())
        if count:
            bad.append(f"{key} ({count} of {t.numel()})")
    return bad


def refuse_nonfinite(tensors: Mapping[str, torch.Tensor], where: str, fix: str,
                     model: nn.Module | None = None, config: DIPConfig | None = None) -> None:
    """Raise if `nonfinite_tensors` finds anything: the one message of the finiteness rule.

    Args:
        tensors, model, config: as `nonfinite_tensors`.
        where: the file or call the tensors belong to, for the message.
        fix: what the user can do.
    Raises:
        ProjectionFileError: naming up to three tensors, with their counts of NaN / Inf.
    """
    bad = nonfinite_tensors(tensors, model, config)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ProjectionFileError(f"{where}: non-finite values (NaN or Inf) in {len(bad)} "
                                  f"tensor(s): {', '.join(bad[:3])}{more}; {fix}.")


def projections(model: nn.Module) -> dict[str, GaussianProjection]:
    """Map from host-module name to the projection inserted before (or after) that module.

    Projections are found by type, not by name, so a user's module called ``dip_projection``
    is never mistaken for one. Returns an empty dict for a model without projections.
    """
    out: dict[str, GaussianProjection] = {}
    for name, module in model.named_modules():
        if isinstance(module, GaussianProjection):
            host = name.rsplit(".", 1)[0] if "." in name else ""
            out[host] = module
    return out


def get_config(model: nn.Module) -> DIPConfig | None:
    """The `DIPConfig` a model was projected with, or None."""
    return getattr(model, _CONFIG_ATTR, None)


def project(model: nn.Module, config: DIPConfig | None = None) -> nn.Module:
    """Insert a learned Gaussian projection before each targeted layer of ``model``, in place.

    Every check runs before the model is touched. The model's own parameters, and their
    state_dict keys, are untouched; each projection adds ``<layer>.dip_projection.raw_variance``.
    In ``eval()`` mode the projected model computes exactly what the original did.

    Args:
        model: any ``torch.nn.Module``.
        config: a `DIPConfig`; default ``DIPConfig()`` (every Linear/Conv input).
    Returns:
        ``model`` itself, now projected.
    Raises:
        AlreadyProjectedError: if ``model`` already holds projections.
        TargetError: if the config's targets match nothing usable (names candidates).
        TypeError: ``model`` is not an ``nn.Module`` or ``config`` not a `DIPConfig`.
    """
    require_module(model, "dipnet.project")
    config = config if config is not None else DIPConfig()
    if not isinstance(config, DIPConfig):
        raise TypeError(f"config must be a dipnet.DIPConfig, got {type(config).__name__}")
    existing = projections(model)
    if existing:
        raise AlreadyProjectedError(
            f"model already holds {len(existing)} DIPNet projections (e.g. on "
            f"'{next(iter(existing))}'); call dipnet.remove(model) first."
        )
    targets = resolve_targets(model, config)
    modules = dict(model.named_modules())
    guard = Guard.for_config(config, len(targets))
    for t in targets:
        host = modules[t.name]
        proj = GaussianProjection(
            t.num_features,
            feature_dim=t.feature_dim,
            init_variance=config.start_variance,
            parameterization=config.parameterization,
            variance_floor=config.variance_floor,
            on=t.on,
            batched_ndim=t.batched_ndim,
        )
        device = _device_of(host) or _device_of(model)
        if device is not None:
            # Only the device: variances stay float32 even in a half-precision model (they
            # are tiny numbers whose logarithm enters the loss).
            proj.to(device=device)
        proj.raw_variance.requires_grad_(config.learn_variance)
        object.__setattr__(proj, "_guard", guard)
        proj.attach(host)
    object.__setattr__(model, _CONFIG_ATTR, config)
    return model


def _device_of(module: nn.Module) -> torch.device | None:
    # The host's own device: in a model split over devices (device_map, pipeline stages) the
    # first parameter of the whole model can sit elsewhere.
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return None


def remove(model: nn.Module) -> nn.Module:
    """Take every projection out of ``model``, in place; returns the plain model.

    Its outputs and state_dict are then those of the model before `project` (with the
    original weights as they are now).
    """
    for proj in projections(model).values():
        proj.detach()
    if _CONFIG_ATTR in model.__dict__:
        del model.__dict__[_CONFIG_ATTR]
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DistributedDataParallel / DataParallel wrappers (they keep it
    under ``.module``), or ``model`` itself."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def variance_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The raw variance parameters of all projections (for a separate optimizer group)."""
    return [p.raw_variance for p in projections(model).values()]


def train_variances_as_configured(model: nn.Module, config: DIPConfig | None = None) -> None:
    """Set every variance's ``requires_grad`` to ``config.learn_variance``, in place.

    For wrappers that change ``requires_grad`` wholesale (PEFT freezes every non-adapter
    parameter): afterwards the variances learn exactly when the config says so, and a frozen
    arm (``learn_variance=False``, the fixed-noise control) stays frozen.

    Args:
        model: a projected model.
        config: the config to follow; default the one the model was projected with (and
            learned variances if the model records none).
    """
    config = config if config is not None else get_config(model)
    learn = True if config is None else config.learn_variance
    for p in variance_parameters(model):
        p.requires_grad_(learn)


def parameter_groups(model: nn.Module, variance_lr: float | None = None) -> list[dict]:
    """Optimizer parameter groups: the model's own parameters, then the variances.

    The variance group has ``weight_decay=0``: weight decay on the raw parameter would pull
    every variance towards softplus(0) = 0.69 (or exp(0) = 1), a prior nobody asked for. The
    barrier is the variances' only regulariser.

    Args:
        model: a projected model.
        variance_lr: learning rate of the variances; None takes the model's
            ``DIPConfig.variance_lr``, and if that is None too the optimizer's default lr.
    Returns:
        A list of two dicts for ``torch.optim.X(groups, lr=..., weight_decay=...)`` (one when
        the variances are frozen, ``learn_variance=False``).
    Raises:
        NotProjectedError: if the model has no projections.
    """
    var = variance_parameters(model)
    if not var:
        raise NotProjectedError("model has no DIPNet projections; call dipnet.project first.")
    ids = {id(p) for p in var}
    own = {"params": [p for p in model.parameters() if id(p) not in ids]}
    var = [p for p in var if p.requires_grad]
    if not var:  # DIPConfig.learn_variance=False: fixed noise, nothing to learn
        return [own]
    group: dict = {"params": var, "weight_decay": 0.0}
    if variance_lr is None:
        config = get_config(model)
        variance_lr = config.variance_lr if config is not None else None
    if variance_lr is not None:
        group["lr"] = variance_lr
    return [own, group]


def variances(model: nn.Module) -> dict[str, torch.Tensor]:
    """Current variances per projected module, detached copies."""
    return {name: p.variance.detach().clone() for name, p in projections(model).items()}


@contextlib.contextmanager
def _mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    projs = projections(model)
    if not projs:
        raise NotProjectedError("model has no DIPNet projections; call dipnet.project first.")
    before = {name: p.mode for name, p in projs.items()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    if mode == "sample":
        # nn.TransformerEncoderLayer's inference fast path skips its submodules' hooks; sampling
        # must go through them.
        torch.backends.mha.set_fastpath_enabled(False)
    try:
        for p in projs.values():
            p.set_mode(mode)  # type: ignore[arg-type]
        yield model
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for name, p in projs.items():
            p.set_mode(before[name])  # type: ignore[arg-type]


@contextlib.contextmanager
def intercepted(model: nn.Module,
                fn: Callable[[str, GaussianProjection, torch.Tensor], torch.Tensor]
                ) -> Iterator[dict[str, GaussianProjection]]:
    """Context manager: every projection's hook calls ``fn(host name, projection, tensor)``
    instead of projecting, and passes on what ``fn`` returns.

    The hook's own choice of which argument to project is kept (an instance attribute shadows
    `GaussianProjection.project`, which the hook calls); ``fn`` may call
    ``GaussianProjection.project(projection, tensor)`` to project as usual. Modes are restored
    afterwards. Yields the model's projections (empty for a model without any).
    """
    projs = projections(model)
    before = {name: p.mode for name, p in projs.items()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # As in `sampling`: the fast path of nn.TransformerEncoderLayer skips its submodules' hooks.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for name, p in projs.items():
            object.__setattr__(p, "project", lambda t, name=name, p=p: fn(name, p, t))
            p.set_mode("sample")
        yield projs
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for name, p in projs.items():
            p.__dict__.pop("project", None)
            p.set_mode(before[name])


def sampling(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Context manager: projections sample even in ``eval()`` mode (Monte Carlo prediction).

    Raises:
        NotProjectedError: if the model has no projections.
    """
    return _mode(model, "sample")


def deterministic(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Context manager: projections are off even in ``train()`` mode (the paper's Algorithm 3).

    Raises:
        NotProjectedError: if the model has no projections.
    """
    return _mode(model, "off")


# ---------------------------------------------------------------------- saving and loading
def save_projections(model: nn.Module, path: str | os.PathLike) -> None:
    """Save only the projections (their variances and the config) to a safetensors file.

    The write is atomic: a crash leaves either the old file or the new one, never half of one.

    Raises:
        NotProjectedError: if the model has no projections.
        ProjectionFileError: a variance is NaN or Inf (`nonfinite_tensors`); nothing is written.
        OSError: the file cannot be written (naming it; ENOSPC on a full disk).
    """
    projs = projections(model)
    if not projs:
        raise NotProjectedError("model has no DIPNet projections to save.")
    config = get_config(model) or DIPConfig()
    tensors = {
        f"{name}.{ATTR}.raw_variance" if name else f"{ATTR}.raw_variance":
            p.raw_variance.detach().cpu().contiguous()
        for name, p in projs.items()
    }
    refuse_nonfinite(tensors, f"not saving {os.fspath(path)}", "the run diverged (lower the "
                     "learning rate or variance_lr) or the variances were set by hand; "
                     "nothing was written", model)
    layout = {
        # init_variance: where training started, so that a loaded model's summary can still
        # say how far its variances moved.
        name: {"num_features": p.num_features, "feature_dim": p.feature_dim, "on": p.on,
               "init_variance": p.init_variance}
        for name, p in projs.items()
    }
    metadata = {
        "format": "dipnet-projections-v1",
        "config": json.dumps(config.to_dict()),
        "layout": json.dumps(layout),
    }
    atomic_write_safetensors(tensors, path, metadata)


def _bad_dtype(key: str, raw: torch.Tensor) -> list[str]:
    """Why a saved raw-variance tensor cannot be loaded for its dtype (empty if it can)."""
    if not raw.is_floating_point():
        return [f"{key}: dtype {raw.dtype}, expected a floating-point tensor"]
    return []


def load_projections(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load projections saved by `save_projections` into ``model``.

    If the model has no projections yet, it is first projected with the saved config. Loading
    happens only after every tensor has been checked, so a bad file leaves the model unchanged.

    Returns:
        ``model``.
    Raises:
        ProjectionFileError: if the file is missing, not a dipnet projections file, holds no
            valid config, holds non-finite variances, or its projections do not match the
            model's.
    """
    from safetensors import safe_open

    require_module(model, "dipnet.load_projections")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ProjectionFileError(f"projections file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ProjectionFileError(f"cannot read projections file {path}: {err}") from None
    if metadata.get("format") != "dipnet-projections-v1":
        raise ProjectionFileError(f"{path} is not a dipnet projections file (no format tag).")
    was_projected = bool(projections(model))
    if not was_projected:
        try:
            saved = DIPConfig.from_dict(json.loads(metadata["config"]))
        except (KeyError, TypeError, ValueError) as err:  # DIPConfigError is a ValueError
            raise ProjectionFileError(
                f"{path} holds no usable DIPConfig ({type(err).__name__}: {err}); re-save it "
                "with dipnet.save_projections."
            ) from None
        project(model, saved)
    projs = projections(model)
    expected = {
        (f"{name}.{ATTR}.raw_variance" if name else f"{ATTR}.raw_variance"): p
        for name, p in projs.items()
    }
    problems = []
    if set(expected) != set(tensors):
        missing = sorted(set(expected) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(expected))[:3]
        problems.append(f"missing {missing}, unexpected {extra}")
    else:
        for key, p in expected.items():
            if tensors[key].shape != p.raw_variance.shape:
                problems.append(f"{key}: file {tuple(tensors[key].shape)} vs model "
                                f"{tuple(p.raw_variance.shape)}")
            else:
                problems += _bad_dtype(key, tensors[key])
    try:
        if problems:
            raise ProjectionFileError(f"{path} does not fit this model: " + "; ".join(problems))
        refuse_nonfinite(tensors, path, "the file is damaged or was saved from a diverged run",
                         model)
    except ProjectionFileError:
        if not was_projected:
            remove(model)
        raise
    starts = _saved_starts(metadata)
    with torch.no_grad():
        for (key, p), name in zip(expected.items(), projs):
            p.raw_variance.copy_(tensors[key])
            p.init_variance = starts.get(name, p.init_variance)
            p.calibrated = True  # trained values: never replaced by a first-batch calibration
    return model


def _saved_starts(metadata: dict[str, str]) -> dict[str, float]:
    """The initial variance of each saved projection (files saved before 0.x carry none)."""
    try:
        layout = json.loads(metadata.get("layout", "{}"))
        return {name: float(row["init_variance"]) for name, row in layout.items()
                if isinstance(row, dict) and "init_variance" in row}
    except (TypeError, ValueError, AttributeError):
        return {}
