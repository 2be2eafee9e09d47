"""Save and load a DIPNet like a PEFT adapter, and print what a projected model holds.

A saved DIPNet is a folder::

    dipnet_config.json            what was saved: the DIPConfig, the projections' layout, file names
    dip_projections.safetensors   the learned variances (with the config in its metadata)
    model.safetensors             only with save_weights=True: the host model's own weights

``dip_projections.safetensors`` is the file `dipnet.save_projections` writes and the Hugging Face
`DIPTrainer` puts next to a checkpoint, so a Trainer output folder loads with `from_pretrained`
too. ``model.safetensors`` has the keys of the plain model's ``state_dict`` (tied weights stored
once), the file name and key layout transformers uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import nn

from dipnet._util.version import __version__
from dipnet.config import DIPConfig, DIPConfigError
from dipnet._util.fileio import atomic_path, atomic_write_json, atomic_write_safetensors
from dipnet.inject import (
    _CONFIG_ATTR,
    VARIANCE_KEY,
    NotProjectedError,
    ProjectionFileError,
    get_config,
    load_projections,
    project,
    projections,
    refuse_nonfinite,
    remove,
    require_module,
    require_state_dict,
    save_projections,
)
from dipnet.misuse import missing_projections
from dipnet.monitor import variance_stats
from dipnet.projection import ProjectionShapeError
from dipnet.targeting import TargetError

CONFIG_FILE = "dipnet_config.json"
PROJECTIONS_FILE = "dip_projections.safetensors"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "dipnet-pretrained-v1"

_VARIANCE_SUFFIX = VARIANCE_KEY
ProjectFn = Callable[[nn.Module, DIPConfig], nn.Module]


# ---------------------------------------------------------------------- helpers
def _projection_key(host: str) -> str:
    return f"{host}.{_VARIANCE_SUFFIX}" if host else _VARIANCE_SUFFIX


def _is_projection_key(key: str) -> bool:
    return key == _VARIANCE_SUFFIX or key.endswith("." + _VARIANCE_SUFFIX)


def _host_of(key: str) -> str:
    return key[: -len(_VARIANCE_SUFFIX)].rstrip(".")


def _layout(model: nn.Module) -> dict[str, dict[str, Any]]:
    """What must agree between a saved DIPNet and a model for the variances to mean the same."""
    return {
        name: {"num_features": p.num_features, "feature_dim": p.feature_dim, "on": p.on,
               "parameterization": p.parameterization, "variance_floor": p.variance_floor}
        for name, p in projections(model).items()
    }


def _host_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without its projections: the plain model's keys and tensors."""
    return {k: v for k, v in model.state_dict().items() if not _is_projection_key(k)}


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                              dict[str, str]]:
    """Tensors safetensors can store, plus ``{alias: kept key}`` for tied weights.

    safetensors refuses tensors that share memory. Tied weights (the same tensor under two keys,
    e.g. an embedding and an output layer) are stored once and recorded as aliases; tensors that
    overlap only in part are stored as copies.
    """
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_storage: dict[int, list[str]] = {}
    for key, t in tensors.items():
        t = t.detach()
        if t.numel() == 0:
            out[key] = t.cpu().contiguous()
            continue
        by_storage.setdefault(t.untyped_storage().data_ptr(), []).append(key)
    for keys in by_storage.values():
        first = tensors[keys[0]].detach()
        stored = []
        for key in keys:
            t = tensors[key].detach()
            if key != keys[0] and (t.storage_offset(), t.shape, t.stride(), t.dtype) == (
                    first.storage_offset(), first.shape, first.stride(), first.dtype):
                aliases[key] = keys[0]
            else:
                stored.append(key)
        for key in stored:
            t = tensors[key].detach().cpu().contiguous()
            # Views that overlap only in part cannot be aliases: each is stored as a copy.
            out[key] = t.clone() if len(stored) > 1 else t
    return out, aliases


def _plain_file_name(value: Any, what: str, config_path: Path) -> str:
    # The config names files inside its own folder; a path elsewhere is refused (a tampered
    # config must not make us read arbitrary files).
    if not isinstance(value, str) or not value or os.path.basename(value) != value:
        raise ProjectionFileError(
            f"{config_path}: '{what}' must be a file name inside the folder, got {value!r}; "
            "save the model again with dipnet.save_pretrained."
        )
    return value


# ---------------------------------------------------------------------- saving
def save_pretrained(model: nn.Module, directory: str | os.PathLike,
                    save_weights: bool = False) -> Path:
    """Save a projected model's DIPNet into ``directory`` (created if needed), PEFT-style.

    Writes ``dipnet_config.json`` and ``dip_projections.safetensors`` and, with
    ``save_weights=True``, ``model.safetensors`` with the host model's own weights (for a model
    whose weights were trained too; leave it False when the weights are a known pretrained
    checkpoint). The files are written under temporary names and renamed into place together
    once all are complete, ``dipnet_config.json`` last: a failed save leaves the previous one.

    Args:
        model: a model projected with `dipnet.project` (or ``dipnet.hf.project_model``).
        directory: the folder to write into; existing files of the same names are replaced.
        save_weights: also save the host model's weights.
    Returns:
        The folder, as a ``Path``.
    Raises:
        NotProjectedError: if the model has no projections.
        ProjectionFileError: if ``directory`` exists and is not a folder, or a saved tensor
            (a variance, or a weight with ``save_weights``) holds NaN or Inf; nothing is
            written then.
    """
    require_module(model, "dipnet.save_pretrained")
    if not projections(model):
        raise NotProjectedError("model has no DIPNet projections to save; call "
                                "dipnet.project(model, config) and train it first.")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ProjectionFileError(f"{directory} exists and is not a folder; save_pretrained "
                                  "writes a folder (choose another path).")
    # The finiteness rule for every tensor of the save, before anything touches the disk.
    refuse_nonfinite(model.state_dict() if save_weights else
                     {k: v for k, v in model.state_dict().items() if _is_projection_key(k)},
                     f"not saving {directory}", "the run diverged (lower the learning rate) "
                     "or a value was set by hand; nothing was written", model)
    directory.mkdir(parents=True, exist_ok=True)
    config = get_config(model) or DIPConfig()
    # Every file is first written under a temporary name and only renamed into place once all
    # of them are complete (the config last): a failed save leaves the previous save intact.
    with contextlib.ExitStack() as staged:
        projections_tmp = staged.enter_context(
            atomic_path(directory / PROJECTIONS_FILE, suffix=".staged"))
        save_projections(model, projections_tmp)
        weights_file = None
        if save_weights:
            weights_tmp = staged.enter_context(
                atomic_path(directory / WEIGHTS_FILE, suffix=".staged"))
            tensors, aliases = _dedupe_shared(_host_state_dict(model))
            atomic_write_safetensors(tensors, weights_tmp,
                                     {"format": "pt", "dipnet_aliases": json.dumps(aliases)})
            weights_file = WEIGHTS_FILE
    atomic_write_json(directory / CONFIG_FILE, {
        "format": FORMAT,
        "dipnet_version": __version__,
        "model_class": type(model).__name__,
        "config": config.to_dict(),
        "projections_file": PROJECTIONS_FILE,
        "weights_file": weights_file,
        "layout": _layout(model),
    })
    return directory


# ---------------------------------------------------------------------- loading
def _read_config(directory: Path) -> dict[str, Any] | None:
    """The parsed ``dipnet_config.json``, or None for a folder that only holds projections."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        if (directory / PROJECTIONS_FILE).is_file():
            return None  # e.g. a DIPTrainer output folder: the projections file is enough
        raise ProjectionFileError(
            f"{directory} holds no saved DIPNet ({CONFIG_FILE} and {PROJECTIONS_FILE} are "
            "missing); save one with dipnet.save_pretrained(model, folder)."
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProjectionFileError(f"cannot read {path} ({err}); save the model again with "
                                  "dipnet.save_pretrained.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ProjectionFileError(f"{path} is not a dipnet config (expected format "
                                  f"'{FORMAT}'); save the model with dipnet.save_pretrained.")
    if not isinstance(meta.get("config"), dict):
        raise ProjectionFileError(f"{path} has no 'config' object; save the model again.")
    return meta


def _saved_config(meta: dict[str, Any] | None, projections_path: Path) -> DIPConfig:
    """The DIPConfig of a save: from the JSON, or from the projections file's metadata."""
    where: Path = projections_path
    try:
        if meta is not None:
            where = projections_path.parent / CONFIG_FILE
            return DIPConfig.from_dict(meta["config"])
        from safetensors import safe_open

        with safe_open(str(projections_path), framework="pt") as f:
            data = json.loads((f.metadata() or {}).get("config", "null"))
        if not isinstance(data, dict):
            raise ProjectionFileError(f"{projections_path} holds no DIPNet config; it was not "
                                      "written by dipnet.")
        return DIPConfig.from_dict(data)
    except DIPConfigError as err:
        raise ProjectionFileError(f"{where}: the saved config is invalid ({err}); save the "
                                  "model again with this dipnet version.") from None
    except ProjectionFileError:
        raise
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ProjectionFileError(f"cannot read {projections_path}: {err}") from None


def _read_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The host weights in ``path``, checked against ``model``'s plain state_dict (keys, shapes)."""
    from safetensors import safe_open

    if not path.is_file():
        raise ProjectionFileError(f"{path} is missing (the config names it); save the model "
                                  "again with dipnet.save_pretrained(..., save_weights=True).")
    try:
        with safe_open(str(path), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("dipnet_aliases", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ProjectionFileError(f"cannot read {path}: {err}") from None
    for alias, kept in (aliases or {}).items():
        if kept in tensors:
            tensors[alias] = tensors[kept]
    expected = _host_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            "; ".join(wrong[:3]),
        ]))
        raise ProjectionFileError(f"the weights in {path} do not fit this model ({detail}); "
                                  "pass the architecture that was saved.")
    refuse_nonfinite(tensors, str(path), "the file is damaged or was saved from a diverged run")
    return tensors


def _layout_problems(saved: Mapping[str, Any], model: nn.Module) -> list[str]:
    now = _layout(model)
    problems = []
    if set(saved) != set(now):
        missing = sorted(set(saved) - set(now))[:3]
        extra = sorted(set(now) - set(saved))[:3]
        problems.append(f"saved projections on {missing} are not in the model, the model's on "
                        f"{extra} were not saved")
    for name in sorted(set(saved) & set(now)):
        for field, value in saved[name].items():
            if field in now[name] and now[name][field] != value:
                problems.append(f"'{name}' {field}: saved {value!r}, model {now[name][field]!r}")
    return problems


def from_pretrained(model: nn.Module, directory: str | os.PathLike, load_weights: bool = True,
                    project_fn: ProjectFn | None = None) -> nn.Module:
    """Load a DIPNet saved with `save_pretrained` into ``model``, in place.

    A plain model is first projected with the saved config; a model that is already projected
    must have the same projections (names, sizes, parameterisation). The saved config then becomes
    the model's config (`dipnet.get_config`). Everything is read and checked before the model is
    changed: on any error the model is left as it was.

    Args:
        model: the same architecture that was saved, plain or projected.
        directory: a folder written by `save_pretrained`, or one that holds only
            ``dip_projections.safetensors`` (a ``DIPTrainer`` output folder).
        load_weights: load ``model.safetensors`` too when the save has it.
        project_fn: how to project a plain model, ``project_fn(model, config)``; default
            `dipnet.project` (``dipnet.hf.project_model`` for PEFT models).
    Returns:
        ``model``.
    Raises:
        ProjectionFileError: the folder or a file is missing or damaged, holds NaN / Inf
            (`dipnet.inject.nonfinite_tensors`), or the save does not fit the model (the
            message says what differs); also when ``load_weights`` is True and the folder
            holds weights but no ``dipnet_config.json`` (nothing is loaded in part).
        TypeError: ``model`` is not an ``nn.Module``.
    """
    require_module(model, "dipnet.from_pretrained")
    directory = Path(directory)
    if not directory.is_dir():
        hint = (" (a single projections file loads with dipnet.load_projections)"
                if directory.is_file() else "")
        raise ProjectionFileError(f"no saved DIPNet at {directory}: not a folder{hint}; write "
                                  "one with dipnet.save_pretrained(model, folder).")
    meta = _read_config(directory)
    config_path = directory / CONFIG_FILE
    if meta is None and load_weights and (directory / WEIGHTS_FILE).is_file():
        # The weights were asked for and lie there, but without the config nothing says they
        # belong to this save: load all that was asked, or nothing.
        raise ProjectionFileError(
            f"{config_path} is missing, so the weights in {directory / WEIGHTS_FILE} cannot be "
            "loaded; restore it (save again with dipnet.save_pretrained(..., save_weights=True))"
            " or pass load_weights=False to load only the projections.")
    proj_name = PROJECTIONS_FILE if meta is None else _plain_file_name(
        meta.get("projections_file"), "projections_file", config_path)
    proj_path = directory / proj_name
    if not proj_path.is_file():
        raise ProjectionFileError(f"{proj_path} is missing (the config names it); save the "
                                  "model again with dipnet.save_pretrained.")
    config = _saved_config(meta, proj_path)
    weights = None
    if load_weights and meta is not None and meta.get("weights_file"):
        weights_name = _plain_file_name(meta["weights_file"], "weights_file", config_path)
        weights = _read_weights(directory / weights_name, model)

    was_projected = bool(projections(model))
    if not was_projected:
        try:
            (project_fn or project)(model, config)
        except (TargetError, ProjectionShapeError) as err:
            raise ProjectionFileError(f"the DIPNet saved in {directory} does not fit this "
                                      f"model: {err}") from None
    try:
        saved_layout = meta.get("layout") if meta is not None else None
        problems = _layout_problems(saved_layout, model) if isinstance(saved_layout, dict) else []
        if problems:
            raise ProjectionFileError(f"the DIPNet saved in {directory} does not fit this model: "
                                      + "; ".join(problems[:4]))
        load_projections(model, proj_path)  # checks names and shapes before copying anything
    except ProjectionFileError:
        if not was_projected:
            remove(model)
        raise
    if weights is not None:
        with torch.no_grad():
            model.load_state_dict(weights, strict=False)
    object.__setattr__(model, _CONFIG_ATTR, config)
    return model


# ---------------------------------------------------------------------- state dicts
class LoadResult(NamedTuple):
    """What `load_state_dict` did not match (as torch's ``load_state_dict`` result)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                    config: DIPConfig | None = None, strict: bool = True) -> LoadResult:
    """``model.load_state_dict`` that knows about DIPNet projections on either side.

    torch's own method refuses a projected model's state_dict in a plain model ("Unexpected
    key(s) in state_dict: ... dip_projection.raw_variance"); this function projects the model
    first. The other way round, a plain state_dict loads into a projected model and the
    projections keep their current variances.

    Args:
        model: a plain or projected model.
        state_dict: from ``model.state_dict()`` of a plain or a projected model.
        config: the `DIPConfig` the state_dict's model was projected with, used when ``model``
            is plain. Default: ``DIPConfig()`` defaults (exp variances, floor 1e-6) with
            projections exactly on the layers the state_dict names. Pass the config if it used
            ``parameterization="softplus"`` or another ``variance_floor``: the state_dict holds
            raw parameters, whose meaning depends on them.
        strict: as in torch; projection keys never count as missing when the state_dict is plain.
    Returns:
        ``LoadResult(missing_keys, unexpected_keys)``.
    Raises:
        ProjectionFileError: the state_dict's projections do not fit the model (named layers
            missing, other sizes, or ``config`` projects other layers), or a tensor holds NaN
            or Inf (`dipnet.inject.nonfinite_tensors`); the model is left as it was.
        TypeError: ``model`` is not an ``nn.Module`` or ``state_dict`` not a mapping of tensors.
        RuntimeError: torch's error for a mismatch of the model's own weights (strict).
    """
    require_module(model, "dipnet.load_state_dict")
    require_state_dict(state_dict, "dipnet.load_state_dict")
    refuse_nonfinite(state_dict, "dipnet.load_state_dict", "the state_dict is damaged or comes "
                     "from a diverged run; nothing was loaded", model, config)
    saved_hosts = sorted(_host_of(k) for k in state_dict if _is_projection_key(k))
    was_projected = bool(projections(model))
    projected_here = False
    if saved_hosts and not was_projected:
        absent = [h for h in saved_hosts if h not in dict(model.named_modules())]
        if absent:
            raise ProjectionFileError(
                f"the state_dict has projections on layers this model does not have "
                f"({absent[:3]}); load it into the architecture it was saved from.")
        if config is None:
            config = DIPConfig(placement="custom",
                               target_modules="|".join(re.escape(h) for h in saved_hosts))
        try:
            project(model, config)
        except (TargetError, ProjectionShapeError) as err:
            raise ProjectionFileError(
                f"the state_dict's projections (on {saved_hosts[:3]}) do not fit this model: "
                f"{err}") from None
        projected_here = True
    try:
        if saved_hosts:
            now = projections(model)
            if sorted(now) != saved_hosts:
                raise ProjectionFileError(
                    f"the state_dict has projections on {saved_hosts[:4]}, the model on "
                    f"{sorted(now)[:4]}; pass the config the state_dict was trained with.")
            wrong = [f"'{h}': {tuple(state_dict[_projection_key(h)].shape)} vs "
                     f"{tuple(now[h].raw_variance.shape)}" for h in saved_hosts
                     if tuple(state_dict[_projection_key(h)].shape)
                     != tuple(now[h].raw_variance.shape)]
            if wrong:
                raise ProjectionFileError("the state_dict's projection sizes do not fit this "
                                          "model: " + "; ".join(wrong[:3]))
            result = model.load_state_dict(dict(state_dict), strict=strict)
            for proj in now.values():
                proj.calibrated = True  # trained values: no first-batch calibration
            return LoadResult(list(result.missing_keys), list(result.unexpected_keys))
        result = model.load_state_dict(dict(state_dict), strict=False)
        missing = [k for k in result.missing_keys if not _is_projection_key(k)]
        if strict and (missing or result.unexpected_keys):
            # Same wording as torch, without the projections it would list as missing.
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(model).__name__}: missing keys "
                f"{missing[:5]}, unexpected keys {list(result.unexpected_keys)[:5]}")
        return LoadResult(missing, list(result.unexpected_keys))
    except BaseException:
        if projected_here:
            remove(model)
        raise


# ---------------------------------------------------------------------- summary
def summary_dict(model: nn.Module) -> dict[str, Any]:
    """What a (projected) model holds, as plain values (the data behind `summary`).

    Returns:
        ``{"num_projections", "num_features", "parameters_added", "model_parameters",
        "percent_added", "trainable_parameters", "total_parameters", "placement", "config",
        "variance": {"mean", "min", "max"}, "layers": [{"name", "module", "on", "feature_dim",
        "num_features", "mode", "sampling", "variance_mean", "variance_min", "variance_max",
        "variance_start", "start_calibrated", "moved", "learned"}], "missing"}``; ``missing``
        counts projections the model was given that are no longer in it. ``variance_start`` is
        the (mean) variance training started from, ``moved`` the mean over features of
        ``|lambda / start - 1|``, ``learned`` whether the variances are trained.
        ``percent_added`` is relative to the model's own parameters; ``variance`` is over
        every feature of every projection. A plain model gives zeros and an empty ``layers``.
    """
    projs = projections(model)
    proj_ids = {id(p) for proj in projs.values() for p in proj.parameters()}
    params = list(model.parameters())  # each shared parameter once
    own = sum(p.numel() for p in params if id(p) not in proj_ids)
    added = sum(p.numel() for p in params if id(p) in proj_ids)
    modules = dict(model.named_modules())
    layers = []
    all_var = []
    moved = {name: row["rel_change"] for name, row in variance_stats(model).items()} \
        if projs else {}
    config = get_config(model)
    relative = config is not None and config.relative_init
    missing = missing_projections(projs)
    for name, p in projs.items():
        with torch.no_grad():
            v = p.variance.detach().float()
        all_var.append(v.reshape(-1))
        layers.append({
            "name": name or "(model)",
            "module": type(modules.get(name, model)).__name__,
            "on": p.on,
            "feature_dim": p.feature_dim,
            "num_features": p.num_features,
            "mode": p.mode,
            "sampling": p.sampling,
            "variance_mean": float(v.mean()),
            "variance_min": float(v.min()),
            "variance_max": float(v.max()),
            "variance_start": p.init_variance,
            # A relative start that nothing calibrated: the layer began at the placeholder.
            "start_calibrated": p.calibrated or not relative,
            "moved": moved[name or "<input>"],
            "learned": bool(p.raw_variance.requires_grad),
        })
    every = torch.cat(all_var) if all_var else None
    return {
        "num_projections": len(projs),
        "num_features": sum(p.num_features for p in projs.values()),
        "parameters_added": added,
        "model_parameters": own,
        "percent_added": 100.0 * added / own if own else 0.0,
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "total_parameters": own + added,
        "placement": config.placement if config is not None else None,
        "config": config.to_dict() if config is not None else None,
        "variance": ({"mean": float(every.mean()), "min": float(every.min()),
                      "max": float(every.max())} if every is not None else None),
        "layers": layers,
        "missing": missing,
    }


def summary(model: nn.Module) -> str:
    """A short report of a model's DIPNet, like PEFT's ``print_trainable_parameters``.

    One line each for the projections and parameters added, the variances over all features,
    then a table with one row per projection: where it sits (the input of a layer, or the
    output of a token embedding), its feature axis and size, its mode, the variance it started
    from ("uncalibrated" when a relative start was never calibrated), how far the variances
    moved from it (mean ``|lambda / start - 1|``; "frozen" when they are not trained) and the
    current variance mean / min / max. ``print(dipnet.summary(model))``.

    Returns:
        The report as a string (a one-line note for a model without projections).
    """
    s = summary_dict(model)
    if not s["num_projections"]:
        return (f"no DIPNet projections in this {type(model).__name__} "
                f"({s['model_parameters']:,} parameters); add them with "
                "dipnet.project(model, dipnet.DIPConfig(...)).")
    placement = f"placement '{s['placement']}'" if s["placement"] else "placement unknown"
    if s["missing"]:
        placement += (f"; {s['missing']} more were lost, e.g. by PEFT's merge_and_unload: "
                      "use dipnet.hf.merge_and_unload")
    var = s["variance"]
    lines = [
        f"DIPNet: {s['num_projections']} projections ({placement}), {s['num_features']:,} "
        f"features, {s['parameters_added']:,} parameters added ({s['percent_added']:.3g}% of "
        f"the model's {s['model_parameters']:,}); trainable {s['trainable_parameters']:,} of "
        f"{s['total_parameters']:,}",
        f"variance over all features: mean {var['mean']:.4g}, min {var['min']:.4g}, "
        f"max {var['max']:.4g}",
    ]
    header = ("layer", "module", "projects", "features", "mode", "var start", "moved",
              "var mean", "var min", "var max")
    rows = [(
        r["name"], r["module"], f"{r['on']} (dim {r['feature_dim']})", f"{r['num_features']:,}",
        f"{r['mode']}{' (sampling)' if r['sampling'] else ''}",
        f"{r['variance_start']:.4g}{'' if r['start_calibrated'] else ' (uncalibrated)'}",
        f"{100 * r['moved']:.1f}%" if r["learned"] else "frozen",
        f"{r['variance_mean']:.4g}", f"{r['variance_min']:.4g}", f"{r['variance_max']:.4g}",
    ) for r in s["layers"]]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)
