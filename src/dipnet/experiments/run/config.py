"""`RunConfig`: every knob of one training run, validated at construction, saved as YAML."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dipnet.config import DIPConfig, DIPConfigError
from dipnet.errors import UserError
from dipnet._util.fileio import atomic_write_text

PERTURBATIONS: tuple[str, ...] = ("none", "gaussian", "fgsm")
#: fresh: a new draw / attack for every mini-batch; fixed: the training set perturbed once.
PERTURBATION_MODES: tuple[str, ...] = ("fresh", "fixed")
# Paper Table 1: Gaussian noise sigma 0.2 and FGSM epsilon 0.2, both on [0, 1] pixels.
DEFAULT_PERTURBATION_STRENGTH = 0.2
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
#: Experiment trackers (Hugging Face's ``report_to`` names); see `dipnet.experiments.run.tracking`.
REPORT_TO: tuple[str, ...] = ("tensorboard", "mlflow")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


@dataclass
class RunConfig:
    """Everything that decides the outcome of one run (and a few knobs that do not).

    Data:
        dataset: a registered data set (``dipnet.experiments.zoo.data.list_datasets()``), or the
            user's own: a ``.npz`` file or ``package.module:factory`` (docs/cli.md).
        data_dir: where the data set's files are; None searches the default places.
        val_fraction: fraction of the training split held out for validation, in [0, 1).
        split_seed: seed of the train/validation split (and of the ``max_train`` subset);
            fixed (0) by default so that every method and seed sees the same split.
        max_train: keep only this many training examples (CPU budgets); None keeps all.
        max_val: evaluate validation on at most this many of the held-out examples (a sampled
            prediction costs mc_samples passes per epoch); None keeps all.
    Model:
        model: a registered model (``list_models()``) or ``"package.module:factory"``.
        model_params: keyword arguments for the model factory (e.g. ``{"hidden": [128]}``).
        normalize: ``{"mean": ..., "std": ...}`` (a number, one per channel, or the input's
            shape): the model gets ``(x - mean) / std`` as its first layer, so data, attacks
            and corruptions stay in [0, 1] pixel units. None: the data's own (a .npz file's
            mean / std arrays), else none.
    Method:
        method: a registered method (``list_methods()``): standard, dipnet, sam, rs, ...
        method_params: the method's parameters (its defaults come from its paper).
        dip: `dipnet.DIPConfig` fields for ``method="dipnet"`` and the other methods whose
            parameters are DIPConfig fields (`takes_dip_settings`, e.g. the fixed-noise
            control); ``method_params`` override them. An error for any other method.
    Training:
        epochs, batch_size, lr, optimizer (adam | adamw | sgd), weight_decay, momentum (sgd),
        lr_schedule (constant | cosine, per epoch, ending at 0).
        seed: seeds weight initialisation, batch order and every noise draw.
        train_perturbation: the paper's Table 1 protocol: perturb the TRAINING inputs with
            ``"none"``, ``"gaussian"`` (N(0, sigma^2), clipped to [0, 1]) or ``"fgsm"``
            (epsilon * sign of the input gradient).
        perturbation_strength: sigma / epsilon; None = the paper's 0.2.
        perturbation_mode: ``"fresh"`` (default): noise drawn / FGSM computed against the
            current model anew for every mini-batch; ``"fixed"``: the training set perturbed
            ONCE before training (Gaussian from a generator seeded by (split_seed, seed); FGSM
            against a clean standard reference model trained first), then used as a fixed
            data set. See `dipnet.experiments.zoo.fixed`.
        compile: train through ``torch.compile`` (inductor, with ATen's random number
            generator; docs/cost.md). Changes the noise stream, so a run resumes only with the
            same setting. On a GPU it pays; on a CPU measure first. Default false.
    Evaluation:
        eval_batch_size: batch size for validation / test passes.
        mc_samples: trajectories averaged by Monte Carlo predictions (methods whose default
            prediction is sampled, e.g. randomized smoothing, and the extra MC accuracy);
            default 8, DIPConfig's k.
        eval_mc: also measure the Monte Carlo test accuracy of methods that predict
            deterministically but can sample (dipnet, dropout): mc_samples extra passes over
            the test set (minutes for a ResNet on the CPU).
    Runtime (do not change results on one machine):
        device: ``"auto"`` (cuda if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        num_threads: torch CPU threads; None leaves torch's default.
        report_to: experiment trackers that get the per-epoch metrics: a list of
            ``tensorboard`` / ``mlflow`` (also given as ``"tensorboard,mlflow"``, ``"all"`` or
            ``"none"``); see `dipnet.experiments.run.tracking`.
        reference_cache: the folder caching the clean reference models of fixed-mode FGSM;
            None = ``<out>/../_reference`` (shared by the runs of one sweep). Set it to share
            references between runs kept in different parent folders.

    Raises:
        UserError: at construction, for any invalid value (the message names the field).
    """

    dataset: str = "digits"
    model: str = "mlp"
    method: str = "standard"
    epochs: int = 10
    seed: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    val_fraction: float = 0.1
    split_seed: int = 0
    max_train: int | None = None
    max_val: int | None = None
    train_perturbation: str = "none"
    perturbation_strength: float | None = None
    perturbation_mode: str = "fresh"
    method_params: dict[str, Any] = field(default_factory=dict)
    dip: dict[str, Any] = field(default_factory=dict)
    model_params: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 1000
    mc_samples: int = 8
    eval_mc: bool = True
    compile: bool = False
    data_dir: str | None = None
    num_threads: int | None = None
    device: str = "auto"
    reference_cache: str | None = None
    normalize: dict[str, Any] | None = None
    report_to: list[str] = field(default_factory=list)

    # Fields that do not change a run's numbers: a resumed run may differ in them.
    RUNTIME_FIELDS = ("data_dir", "num_threads", "device", "reference_cache", "report_to")

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> UserError:
            return UserError(f"config field '{name}'={getattr(self, name)!r} is invalid: "
                             f"expected {expected}.")

        for name in ("dataset", "model", "method", "optimizer", "lr_schedule",
                     "train_perturbation", "perturbation_mode", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, "a non-empty string")
        for name in ("epochs", "batch_size", "eval_batch_size", "mc_samples"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in ("seed", "split_seed"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if self.max_train is not None and (not _is_int(self.max_train) or self.max_train < 2):
            raise bad("max_train", "an integer >= 2, or null for the whole training set")
        if self.max_val is not None and (not _is_int(self.max_val) or self.max_val < 1):
            raise bad("max_val", "an integer >= 1, or null for the whole validation split")
        if self.num_threads is not None and (not _is_int(self.num_threads)
                                             or self.num_threads < 1):
            raise bad("num_threads", "an integer >= 1, or null")
        if not isinstance(self.eval_mc, bool):
            raise bad("eval_mc", "true or false")
        if not isinstance(self.compile, bool):
            raise bad("compile", "true or false")
        if not _is_num(self.lr) or not self.lr > 0:
            raise bad("lr", "a number > 0")
        for name in ("weight_decay", "momentum"):
            if not _is_num(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a number >= 0")
        if not _is_num(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise bad("val_fraction", "a number in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"one of {', '.join(LR_SCHEDULES)}")
        if self.train_perturbation not in PERTURBATIONS:
            raise bad("train_perturbation", f"one of {', '.join(PERTURBATIONS)}")
        if self.perturbation_mode not in PERTURBATION_MODES:
            raise bad("perturbation_mode", f"one of {', '.join(PERTURBATION_MODES)}")
        if self.perturbation_strength is not None and (
                not _is_num(self.perturbation_strength) or self.perturbation_strength < 0):
            raise bad("perturbation_strength", "a number >= 0, or null for the paper's 0.2")
        for name in ("method_params", "dip", "model_params"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, {})
            elif not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise bad(name, "a mapping of parameter names to values")
        if self.dip:
            try:
                DIPConfig.from_dict(dict(self.dip))
            except DIPConfigError as err:
                raise UserError(f"config field 'dip' is invalid: {err}") from None
        for name in ("data_dir", "reference_cache"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        self.report_to = _report_to(self.report_to)
        if self.normalize is not None:
            _check_normalize(self.normalize)

    # ------------------------------------------------------------------ derived values
    @property
    def strength(self) -> float:
        """The perturbation sigma / epsilon in use (the paper's 0.2 unless set)."""
        if self.perturbation_strength is None:
            return DEFAULT_PERTURBATION_STRENGTH
        return float(self.perturbation_strength)

    def run_name(self) -> str:
        """A stable directory name: ``{dataset}-{model}-{method}-{perturbation}-s{seed}``, with
        ``-fixed`` after the perturbation in fixed mode (fresh names stay as they were)."""
        from dipnet.experiments.zoo.data import dataset_label

        model = self.model.replace(":", "_").replace("/", "_").replace(".", "_")
        pert = self.train_perturbation
        if self.perturbation_mode == "fixed" and pert != "none":
            pert += "-fixed"
        dataset = dataset_label(self.dataset).replace("/", "_")
        return f"{dataset}-{model}-{self.method}-{pert}-s{self.seed}"

    def inapplicable(self) -> list[str]:
        """Settings given that this run would silently ignore (each as a phrase naming the
        field, its option and where it applies); empty when everything given applies."""
        out = []
        if self.dip and not takes_dip_settings(self.method):
            out.append(f"'dip' {self.dip} (--set dip.KEY, or --dip) applies only to methods "
                       f"{', '.join(dip_methods())}, not {self.method!r}: remove it or use "
                       "--method dipnet")
        if self.train_perturbation == "none":
            if self.perturbation_strength is not None:
                out.append("'perturbation_strength' (--perturbation-strength) applies only with "
                           "train_perturbation gaussian or fgsm, not 'none'")
            if self.perturbation_mode != "fresh":
                out.append(f"'perturbation_mode' {self.perturbation_mode!r} "
                           "(--perturbation-mode) applies only with train_perturbation "
                           "gaussian or fgsm, not 'none'")
        return out

    def resolved_method_params(self) -> dict[str, Any]:
        """The method's parameters: for dipnet (and the other methods of `dip_methods`, built
        on DIPConfig, such as fixed_noise), ``dip`` merged with ``method_params``."""
        if takes_dip_settings(self.method):
            return {**self.dip, **self.method_params}
        return dict(self.method_params)

    def result_dict(self) -> dict[str, Any]:
        """The fields that decide the run's numbers (used to check that a resume or reuse
        matches): `to_dict` without the runtime-only fields and without settings that do not
        apply to this run (``dip`` of a non-dipnet run, the perturbation's strength and mode
        without a perturbation), so folders written before those were refused still match."""
        skip = set(self.RUNTIME_FIELDS)
        if not takes_dip_settings(self.method):
            skip.add("dip")
        if self.train_perturbation == "none":
            skip.update(("perturbation_strength", "perturbation_mode"))
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-serialisable values, in field order."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Build from `to_dict` output (or a YAML file's mapping).

        Raises:
            UserError: on an unknown key or an invalid value.
        """
        if not isinstance(data, dict):
            raise UserError(f"a run config must be a mapping of fields, got "
                            f"{type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(f"unknown config field(s) {unknown}; known fields: "
                            f"{', '.join(known)}.")
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunConfig":
        """Read a YAML config file.

        Raises:
            UserError: if the file is missing, not YAML, or holds bad fields.
        """
        import yaml

        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; pass an existing YAML file "
                            "(e.g. the config.yaml of an earlier run).")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"config file {path} is not valid YAML: "
                            f"{str(err).splitlines()[0]}") from None
        return cls.from_dict(data or {})

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as YAML, atomically (temp file + os.replace)."""
        import yaml

        text = ("# dipnet run config; re-run with: dipnet train --config this_file\n"
                + yaml.safe_dump(self.to_dict(), sort_keys=False))
        atomic_write_text(Path(path), text)


def takes_dip_settings(method: str) -> bool:
    """Whether ``method``'s parameters include every `DIPConfig` field (dipnet, and controls
    built on its projections, such as fixed_noise), so that the run field ``dip`` applies."""
    from dipnet.experiments.zoo.methods import get_method, list_methods

    if method not in _TAKES_DIP:
        if method not in list_methods():
            return False  # not cached: it may be registered later
        _TAKES_DIP[method] = set(DIPConfig().to_dict()) <= set(get_method(method).defaults)
    return _TAKES_DIP[method]


_TAKES_DIP: dict[str, bool] = {}


def dip_methods() -> list[str]:
    """The registered methods that take ``dip`` settings (see `takes_dip_settings`)."""
    from dipnet.experiments.zoo.methods import list_methods

    return [m for m in list_methods() if takes_dip_settings(m)]


def _report_to(value: Any) -> list[str]:
    """``"tensorboard,mlflow"`` / ``"all"`` / ``"none"`` / a list -> a list of tracker names."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise UserError(f"config field 'report_to'={value!r} is invalid: expected "
                        f"{', '.join(REPORT_TO)}, all or none (a list or comma-separated).")
    names: list[str] = []
    for item in (v.strip() for v in items):
        if item in ("", "none"):
            continue
        for name in (REPORT_TO if item == "all" else (item,)):
            if name not in REPORT_TO:
                raise UserError(f"config field 'report_to' names {name!r}: choose from "
                                f"{', '.join(REPORT_TO)}, all or none (--report-to).")
            if name not in names:
                names.append(name)
    return names


def _check_normalize(value: Any) -> None:
    # The shape is checked against the input when the model is built (the input is unknown
    # here); the form and the values are checked now.
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise UserError(f"config field 'normalize'={value!r} is invalid: expected a mapping "
                        "{mean: ..., std: ...} (numbers, or one per channel).")
    for key in ("mean", "std"):
        flat = value[key] if isinstance(value[key], list) else [value[key]]
        while flat and isinstance(flat[0], list):
            flat = [v for row in flat for v in (row if isinstance(row, list) else [row])]
        if not flat or not all(_is_num(v) for v in flat) or (
                key == "std" and not all(v > 0 for v in flat)):
            raise UserError(f"config field 'normalize' {key}={value[key]!r} is invalid: expected "
                            "finite numbers" + (" > 0" if key == "std" else "") + ".")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
