"""Sweeps: a grid of training runs (methods x seeds x training-input perturbations), resumable.

A sweep is described by a :class:`SweepConfig` (a YAML file under ``configs/`` or built from
``dipnet compare`` options). :func:`run_sweep` expands it into one :class:`RunConfig` per grid
point, trains each into ``OUT/runs/<run_name>/`` with :func:`run_training` (which reuses a run
that already finished, so an interrupted sweep resumes where it stopped), optionally evaluates
every run with the evaluation suite, and records what it did in ``OUT/sweep.yaml`` (the resolved
sweep, re-runnable with ``dipnet compare --config``) and ``OUT/provenance.json``.

The lifecycle mirrors a run's: :func:`plan_sweep` validates every grid point, finds the data,
builds every (model, method) pair once and compares every run folder with its run, writing
nothing; then the sweep folder is locked (``OUT/.lock``; a second ``compare`` on it gets one
line), looked at again, and only then is ``sweep.yaml`` written and training started. Each run
locks its own folder as well (different files, never waited on: no deadlock). The runs execute
through a backend (`dipnet.experiments.sweep.backends`): local worker processes that die with the
sweep (`locks.die_with_parent`), Ray tasks or submitit (Slurm) jobs, all running the same
`_train_one` into the same folders.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from dipnet._util import trust
from dipnet._util.nested import set_nested
from dipnet.errors import UserError, describe_os_error
from dipnet._util.fileio import atomic_write_text, is_disk_error
from dipnet.experiments.sweep import backends
from dipnet.experiments.run.config import dip_methods, takes_dip_settings
from dipnet.experiments.run.locks import FolderLock
from dipnet.experiments.run.rundir import check_out_path, inspect_run_folder

__all__ = ["SweepConfig", "SweepResult", "SweepPlan", "METHODS", "PERTURBATIONS",
           "PERTURBATION_MODES", "EVALUATE_SUITES", "expand_grid", "plan_sweep", "run_sweep",
           "load_sweep_config", "parse_param", "is_finished", "provenance"]

#: The paper's methods first, in report order, then any other method the engine registers
#: (see dipnet.experiments.zoo.methods; e.g. the fixed-noise control).
_CORE_METHODS = ("standard", "dipnet", "sam", "rs", "input_noise", "dropout", "mixup", "cutmix",
                 "cutout")


def _registered_methods() -> tuple[str, ...]:
    from dipnet.experiments.zoo.methods import list_methods

    return _CORE_METHODS + tuple(m for m in list_methods() if m not in _CORE_METHODS)


METHODS = _registered_methods()
#: The paper's training-input conditions (Table 1 columns).
PERTURBATIONS = ("none", "gaussian", "fgsm")
#: How the perturbed conditions perturb: anew per batch, or the training set once.
PERTURBATION_MODES = ("fresh", "fixed")
EVALUATE_SUITES = ("quick", "full", "none")


@dataclass
class SweepConfig:
    """One sweep: a data set and model, the methods, seeds and training-input conditions.

    Fields:
        dataset, model: passed to every run (names from the engine's registries).
        methods: training methods to compare; ``standard`` should be among them, since every
            paired test is against it (the report says so when it is missing).
        seeds: the seeds; each method runs once per seed and per perturbation.
        train_perturbations: subset of ``none``, ``gaussian``, ``fgsm`` (the paper's protocol).
        perturbation_mode: ``fresh`` (noise / FGSM drawn anew per batch, the default) or
            ``fixed`` (the training set perturbed once; FGSM against a clean reference model
            shared by every method); applies to the perturbed conditions only. One mode per
            sweep, so a report never pools the two readings.
        evaluate: evaluation suite run on every finished run (``quick``/``full``) or ``none``.
        jobs: runs trained in parallel (processes). Each process should use ``num_threads``
            threads (set it in ``run``) so jobs x threads <= cores.
        run: RunConfig fields applied to every run (epochs, max_train, batch_size, lr,
            num_threads, dip, model_params, data_dir, ...).
        method_params: per-method hyper-parameters, ``{method: {key: value}}``; each run gets
            the entry of its own method as its RunConfig ``method_params``.
        evaluation_params: overrides of the evaluation suite's sizes (``SuiteSettings`` fields
            of dipnet.evaluation.suite, e.g. ``{attack_points: 200}``), for tight budgets.
        name: a label for the report title.
        backend: where the runs execute (`dipnet.experiments.sweep.backends`): empty or
            ``{name: local}`` (processes on this machine), ``{name: ray, address: auto}``,
            ``{name: submitit, slurm_partition: gpu, timeout_min: 120}``; docs/cluster.md.
            Changes no result.
        method_run: per-method RunConfig fields over ``run``, ``{method: {key: value}}``, e.g.
            each method's tuned learning rate (``dipnet tune`` writes it).
        tuning: what ``dipnet tune`` did to choose ``method_params`` / ``method_run`` (budget
            per method, search space, objective); recorded for the report, used by no run.
    """

    dataset: str
    model: str
    methods: list[str]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_perturbations: list[str] = field(default_factory=lambda: ["none"])
    perturbation_mode: str = "fresh"
    evaluate: str = "none"
    jobs: int = 1
    run: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluation_params: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    backend: dict[str, Any] = field(default_factory=dict)
    method_run: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if isinstance(self.seeds, int):
            self.seeds = list(range(self.seeds))
        if isinstance(self.train_perturbations, str):
            self.train_perturbations = [p.strip() for p in self.train_perturbations.split(",")
                                        if p.strip()]
        self.validate()

    def validate(self) -> None:
        """Check every field; raises UserError naming the bad value and the allowed ones."""
        if not self.methods:
            raise UserError("no methods given: pass --methods, e.g. --methods standard,dipnet")
        known = _registered_methods()  # methods registered after import count too
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise UserError(f"unknown method(s) {', '.join(unknown)}: choose from "
                            f"{', '.join(known)}")
        if len(set(self.methods)) != len(self.methods):
            raise UserError(f"a method is listed twice in {self.methods}: list each once")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                     for s in self.seeds):
            raise UserError(f"seeds must be a positive count or a list of integers, got "
                            f"{self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds {self.seeds} repeat a value: give distinct seeds")
        bad = [p for p in self.train_perturbations if p not in PERTURBATIONS]
        if bad or not self.train_perturbations:
            raise UserError(f"unknown train perturbation(s) {bad or '(none given)'}: choose "
                            f"from {', '.join(PERTURBATIONS)}")
        if self.perturbation_mode not in PERTURBATION_MODES:
            raise UserError(f"perturbation_mode must be one of {', '.join(PERTURBATION_MODES)}, "
                            f"got {self.perturbation_mode!r}")
        if self.evaluate not in EVALUATE_SUITES:
            raise UserError(f"--evaluate must be one of {', '.join(EVALUATE_SUITES)}, got "
                            f"{self.evaluate!r}")
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise UserError(f"--jobs must be a positive integer, got {self.jobs!r}")
        if self.evaluation_params is None:
            self.evaluation_params = {}
        if not all(isinstance(getattr(self, k), dict)
                   for k in ("run", "method_params", "evaluation_params")):
            raise UserError("'run', 'method_params' and 'evaluation_params' in a sweep config "
                            "must be mappings (key: value)")
        stray = [m for m in self.method_params if m not in known]
        if stray:
            raise UserError(f"method_params names unknown method(s) {', '.join(stray)}: "
                            f"choose from {', '.join(known)}")
        # settings that no run of this sweep would use are mistakes, not silently ignored
        unused = [m for m in self.method_params if self.method_params[m]
                  and m not in self.methods]
        if unused:
            raise UserError(f"parameters are given for {', '.join(unused)} (method_params / "
                            f"--param {unused[0]}.*), which is not among the methods "
                            f"{', '.join(self.methods)}: add it to --methods or drop them")
        if self.run.get("dip") and not any(takes_dip_settings(m) for m in self.methods):
            raise UserError(f"dip settings {self.run['dip']} (--param dip.*) apply only to "
                            f"{', '.join(dip_methods())}, none of which is among the methods "
                            f"{', '.join(self.methods)}: add dipnet or drop them")
        if "perturbation_mode" in self.run:
            raise UserError("set perturbation_mode at the top level of the sweep (or with "
                            "--perturbation-mode), not under run:")
        self.backend = backends.check_settings(self.backend)
        for key in ("method_run", "tuning"):
            if getattr(self, key) is None:
                setattr(self, key, {})
            if not isinstance(getattr(self, key), dict):
                raise UserError(f"'{key}' in a sweep config must be a mapping (key: value)")
        for method, values in self.method_run.items():
            if method not in self.methods:
                raise UserError(f"method_run names {method!r}, which is not among the methods "
                                f"{', '.join(self.methods)}: add it to --methods or drop it")
            grid = {"dataset", "model", "method", "seed", "train_perturbation",
                    "perturbation_mode"} & set(values or {})
            if not isinstance(values, dict) or grid:
                raise UserError(f"method_run.{method} must map run fields to values (the grid's "
                                f"own {', '.join(sorted(grid)) or 'fields'} cannot be set there)")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, the inverse of :meth:`from_dict` (what sweep.yaml holds)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepConfig":
        """Build from a dict (a parsed YAML file); raises UserError on unknown or missing keys."""
        if not isinstance(data, dict):
            raise UserError("a sweep config must be a YAML mapping (key: value lines)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown key(s) {', '.join(unknown)} in sweep config: allowed "
                            f"keys are {', '.join(sorted(known))}")
        missing = [k for k in ("dataset", "model", "methods") if k not in data]
        if missing:
            raise UserError(f"sweep config lacks {', '.join(missing)}: add them")
        return cls(**copy.deepcopy(data))

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_sweep_config(path: str | os.PathLike[str]) -> SweepConfig:
    """Read a sweep YAML file; raises UserError if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"sweep config {p} does not exist: give the path of a YAML file "
                        f"(see configs/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"sweep config {p} is not valid YAML ({err.__class__.__name__}): "
                        f"fix the file") from None
    return SweepConfig.from_dict(data or {})


def parse_param(text: str) -> tuple[str, list[str], Any]:
    """Parse one ``--param`` option ``scope.key=value``.

    ``scope`` is a method name (the value goes into that method's ``method_params``), ``dip``
    (the DIPConfig of dipnet runs), ``model`` (the model's keyword arguments), ``run`` (any
    RunConfig field, e.g. ``run.lr=0.01``) or ``eval`` (evaluation suite sizes, e.g.
    ``eval.attack_points=200``). The key may be dotted for nested dicts. The value is
    parsed as YAML, so ``0.05``, ``true``, ``[1,2]`` get their types. Returns
    (scope, key path, value); raises UserError on malformed text.
    """
    if "=" not in text:
        raise UserError(f"--param {text!r} lacks '=': write it as method.key=value, e.g. "
                        f"dipnet.gamma=0.05")
    lhs, raw = text.split("=", 1)
    parts = [p for p in lhs.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise UserError(f"--param {text!r} needs a scope and a key (scope.key=value), e.g. "
                        f"sam.rho=0.05, dip.alpha=0.1 or run.lr=0.01")
    scope = parts[0]
    known = _registered_methods()
    if scope not in known + ("dip", "model", "run", "eval"):
        raise UserError(f"--param scope {scope!r} is unknown: use a method name "
                        f"({', '.join(known)}), dip, model, run or eval")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return scope, parts[1:], value


def apply_params(sweep: SweepConfig, params: Iterable[str]) -> SweepConfig:
    """Return a copy of ``sweep`` with ``--param`` overrides applied (see :func:`parse_param`)."""
    data = sweep.to_dict()
    for text in params:
        scope, keys, value = parse_param(text)
        if scope in _registered_methods():
            set_nested(data["method_params"].setdefault(scope, {}), keys, value)
        elif scope == "run":
            set_nested(data["run"], keys, value)
        elif scope == "eval":
            set_nested(data["evaluation_params"], keys, value)
        elif scope == "dip":
            if not isinstance(data["run"].get("dip"), dict):
                data["run"]["dip"] = {}
            set_nested(data["run"]["dip"], keys, value)
        else:  # model
            if not isinstance(data["run"].get("model_params"), dict):
                data["run"]["model_params"] = {}
            set_nested(data["run"]["model_params"], keys, value)
    return SweepConfig.from_dict(data)


def _run_config_cls():
    try:
        from dipnet.experiments.run.config import RunConfig
    except ImportError as err:  # the engine is a sibling module; without it nothing can run
        raise UserError(f"the training engine (dipnet.experiments.run.config) is not available "
                        f"({err}): reinstall dipnet") from None
    return RunConfig


def expand_grid(sweep: SweepConfig) -> list[Any]:
    """One RunConfig per (train perturbation, method, seed), in that nesting order.

    Ordering by perturbation first means a sweep stopped early has complete method columns for
    the first conditions rather than a little of everything. Raises UserError when the engine
    rejects a field (its message names the field).
    """
    RunConfig = _run_config_cls()
    out = []
    for pert in sweep.train_perturbations:
        for method in sweep.methods:
            for seed in sweep.seeds:
                data = copy.deepcopy(sweep.run)
                data.update(dataset=sweep.dataset, model=sweep.model, method=method,
                            seed=int(seed), train_perturbation=pert)
                # each run gets only the settings that apply to it (a run refuses the others)
                if not takes_dip_settings(method):
                    data.pop("dip", None)
                if pert == "none":
                    data.pop("perturbation_strength", None)
                else:
                    data["perturbation_mode"] = sweep.perturbation_mode
                data.update(copy.deepcopy(sweep.method_run.get(method, {})))
                mp = copy.deepcopy(sweep.method_params.get(method, {}))
                if mp:
                    data["method_params"] = {**data.get("method_params", {}), **mp}
                try:
                    out.append(RunConfig.from_dict(data))
                except UserError:
                    raise
                except (TypeError, ValueError, KeyError) as err:
                    raise UserError(f"invalid run setting for {method} (seed {seed}, "
                                    f"{pert}): {err}") from None
    names = [c.run_name() for c in out]
    if len(set(names)) != len(names):
        raise UserError("two grid points map to the same run name: the engine's run_name() "
                        "must include method, seed and train perturbation")
    return out


def is_finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a metrics.json with status 'finished'."""
    p = Path(run_dir) / "metrics.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False


@dataclass
class SweepResult:
    """What a sweep did: run dirs trained now, reused from disk, failed, and evaluated."""

    out_dir: Path
    run_dirs: list[Path] = field(default_factory=list)
    trained: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    evaluated: list[Path] = field(default_factory=list)
    evaluation_skipped: str = ""
    wall_clock_s: float = 0.0


def _train_one(cfg_dict: dict[str, Any], run_dir: str) -> tuple[str, str | None]:
    """Worker entry point (top level so a process pool can pickle it)."""
    RunConfig = _run_config_cls()
    from dipnet.experiments.run.train import run_training
    try:
        run_training(RunConfig.from_dict(cfg_dict), Path(run_dir), progress=False)
        return run_dir, None
    except UserError:
        raise
    except Exception as err:  # a crashed run must not kill the other 161
        return run_dir, _failure(err)


def _failure(err: Exception) -> str:
    """A task's failure as one line; a full or read-only disk, which every other task would
    meet too, stops the sweep instead.

    Raises:
        UserError: for `dipnet._util.fileio.is_disk_error` errors (naming the path).
    """
    if is_disk_error(err):
        raise UserError(describe_os_error(err)) from None  # type: ignore[arg-type]
    return f"{type(err).__name__}: {err}"


def git_commit() -> str | None:
    """HEAD of the checkout the running dipnet was imported from, or None outside git."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(command: Sequence[str] | None = None) -> dict[str, Any]:
    """Where and how results were produced: command, date, host hardware, library versions."""
    import numpy
    import torch

    import dipnet
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": " ".join(command if command is not None else ["dipnet", *sys.argv[1:]]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "dipnet": getattr(dipnet, "__version__", "?"),
        "git_commit": git_commit(),
    }


def _evaluate_one(run_dir: str, suite: str, overrides: dict[str, Any]) -> tuple[str, str | None]:
    """Worker entry point: evaluate one run (top level so a process pool can pickle it)."""
    from dipnet.experiments.assess.evaluate import evaluate_run
    try:
        evaluate_run(run_dir, suite=suite, progress=False, **_tuples(overrides))
        return run_dir, None
    except UserError:
        raise
    except Exception as err:  # keep the other evaluations; the report marks the gap
        return run_dir, _failure(err)


def _tuples(overrides: dict[str, Any]) -> dict[str, Any]:
    # YAML gives lists; the suite's settings hold tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def _task(sweep: SweepConfig, cfg: Any, run_dir: Path, fn: Callable[..., Any],
          *args: Any) -> backends.Task:
    """One run's training or evaluation (``fn(*args)``) as a backend task keyed by its folder,
    asking for the run's threads and, for a CUDA run, a GPU."""
    return backends.Task(key=run_dir, fn=fn, args=args, cpus=int(cfg.num_threads or 1),
                         gpus=backends.task_gpus(sweep.backend, cfg.device))


def evaluation_is_current(run_dir: Path, suite: str, settings: Any) -> bool:
    """Whether ``run_dir/evaluation.json`` exists, reads, and was made by ``suite`` with
    ``settings`` (a `SuiteSettings`). An evaluation made otherwise is not reused: one report
    must not mix two evaluation protocols."""
    try:
        made = json.loads((Path(run_dir) / "evaluation.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(made, dict) and made.get("suite") == suite
            and made.get("settings") == json.loads(json.dumps(settings.to_dict())))


def _evaluate_runs(run_dirs: Sequence[Path], sweep: SweepConfig, progress: bool,
                   result: SweepResult, backend: backends.Backend,
                   configs: dict[Path, Any]) -> None:
    try:
        from dipnet.evaluation.suite import get_settings
    except ImportError as err:
        result.evaluation_skipped = f"evaluation package not available ({err})"
        print(f"dipnet: skipping evaluation: {result.evaluation_skipped}", file=sys.stderr)
        return
    settings = get_settings(sweep.evaluate, **_tuples(sweep.evaluation_params))  # bad names fail here
    todo = [d for d in run_dirs if is_finished(d)
            and not evaluation_is_current(d, sweep.evaluate, settings)]
    if not todo:
        return
    stale = sum((d / "evaluation.json").is_file() for d in todo)
    if stale:
        print(f"dipnet: re-evaluating {stale} run(s) whose evaluation.json was made with other "
              "settings (or cannot be read)", file=sys.stderr)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"evaluate ({sweep.evaluate})", unit="run")

    def _done(d: Path, err: str | None) -> None:
        if err is None:
            result.evaluated.append(d)
        else:
            result.failed[d.name + " (evaluation)"] = err
            print(f"dipnet: evaluation of {d.name} failed: {err}", file=sys.stderr)
        if bar is not None:
            bar.update(1)

    try:
        backend.run([_task(sweep, configs[d], d, _evaluate_one, str(d), sweep.evaluate,
                           sweep.evaluation_params) for d in todo],
                    lambda task, value, err: _done(task.key, err if value is None else value[1]))
    finally:
        if bar is not None:
            bar.close()


@dataclass
class SweepPlan:
    """What `plan_sweep` found: every run's config and folder, which finished, which to train."""

    out_dir: Path
    configs: list[Any]
    run_dirs: list[Path]
    reused: list[Path]
    todo: list[tuple[Any, Path]]


def _check_builds(configs: Sequence[Any]) -> None:
    """Find every data set and build every (model, method) pair once, in memory.

    Raises UserError for missing data or a model / method that cannot be built, before the
    sweep writes anything. The caller's RNG state is kept (building seeds the RNG).
    """
    from dipnet.experiments.zoo.data import load_dataset
    from dipnet.experiments.zoo.methods import get_method
    from dipnet.experiments.run.rng import kept_rng
    from dipnet.experiments.run.train import build_model

    shapes: dict[str, tuple[tuple[int, ...], int, int]] = {}
    built: set[str] = set()
    with kept_rng():
        for cfg in configs:
            dkey = json.dumps([cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.split_seed,
                               cfg.max_train, cfg.max_val])
            if dkey not in shapes:
                data = load_dataset(cfg.dataset, cfg.data_dir, cfg.val_fraction,
                                    cfg.split_seed, cfg.max_train, cfg.max_val)
                shapes[dkey] = (data.input_shape, data.num_classes, len(data.train))
                del data
            mkey = json.dumps([dkey, cfg.model, cfg.model_params, cfg.method,
                               cfg.resolved_method_params()], sort_keys=True, default=str)
            if mkey not in built:
                method = get_method(cfg.method, **cfg.resolved_method_params())
                build_model(cfg, method, *shapes[dkey])
                built.add(mkey)


def _inspect_runs(configs: Sequence[Any], out: Path) -> SweepPlan:
    """Compare every run folder with its run; refuse another run or a damaged one."""
    plan = SweepPlan(out, list(configs), [], [], [])
    for cfg in configs:
        d = out / "runs" / cfg.run_name()
        plan.run_dirs.append(d)
        state = inspect_run_folder(d, cfg)
        if state.kind == "different":
            raise UserError(f"{d} already holds a run with other settings "
                            f"({state.diff_text(' there', ' now', limit=3)}): use another "
                            f"--out, or delete that folder to retrain it")
        if state.kind == "damaged":
            raise UserError(f"{d} holds a run whose {state.damage}; it is not reused: delete "
                            f"that folder to retrain it, or use another --out")
        if state.kind == "finished":
            plan.reused.append(d)
        else:
            plan.todo.append((cfg, d))
    return plan


def _check_one_mode(sweep: SweepConfig, out: Path) -> None:
    """Refuse to add runs of one perturbation mode to a folder holding perturbed runs of the
    other: the report groups runs by their perturbation and would pool the two readings."""
    if not (out / "runs").is_dir() or sweep.train_perturbations == ["none"]:
        return
    for cfg_path in sorted((out / "runs").glob("*/config.yaml")):
        try:
            data = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # a damaged run is refused by its own check
        if not isinstance(data, dict) or data.get("train_perturbation", "none") == "none":
            continue
        mode = data.get("perturbation_mode") or "fresh"
        if mode != sweep.perturbation_mode:
            raise UserError(f"{out} already holds {mode}-mode perturbed runs (e.g. "
                            f"{cfg_path.parent.name}); a {sweep.perturbation_mode}-mode sweep "
                            f"there would be pooled with them in the report: use another --out")


def plan_sweep(sweep: SweepConfig, out_dir: str | os.PathLike[str]) -> SweepPlan:
    """Phase 1 of a sweep: validate everything it will do; writes nothing.

    Checks ``out_dir``, expands the grid, validates every run's settings, loads each data set
    once, builds each (model, method) pair once, checks the evaluation settings, and compares
    every existing run folder with its run. Returns a `SweepPlan`.
    Raises:
        UserError: the first problem found, as one line naming it and the fix.
    """
    from dipnet.experiments.run.train import validate_run

    out = Path(out_dir)
    check_out_path(out)
    backends.require(sweep.backend)  # a missing ray / submitit, an unknown sbatch parameter
    configs = expand_grid(sweep)
    with trust.allowing([sweep.model]):
        for cfg in configs:
            validate_run(cfg)
        _check_builds(configs)
    if sweep.evaluate != "none":
        try:
            from dipnet.evaluation.suite import get_settings
        except ImportError:
            pass  # reported (and skipped) after training
        else:
            get_settings(sweep.evaluate, **_tuples(sweep.evaluation_params))
    _check_one_mode(sweep, out)
    return _inspect_runs(configs, out)


def run_sweep(sweep: SweepConfig, out_dir: str | os.PathLike[str], *, progress: bool = True,
              command: Sequence[str] | None = None,
              on_run_done: Callable[[Path], None] | None = None,
              after: Callable[["SweepResult"], Any] | None = None) -> SweepResult:
    """Train (or reuse) every run of ``sweep`` into ``out_dir/runs/``, then evaluate.

    Takes the sweep, the output folder (created), whether to show a progress bar, the command
    line to record (default: this process's argv), an optional callback per finished run, and
    ``after``: a callback run with the result while the sweep folder is still locked (the
    report). The lifecycle: `plan_sweep` (nothing written), lock ``out_dir`` (refused at once
    if another dipnet process holds it), look at the run folders again, then write
    ``sweep.yaml``, append to ``provenance.json``, train, evaluate. Returns a SweepResult.
    Raises UserError for a problem the user can fix (bad settings, missing data, a folder in
    use or holding other runs); a run that crashes for another reason is recorded in
    ``result.failed`` and the sweep goes on.

    The sweep's own model may be user code (``package.module:factory``): calling this function
    is the caller's say (the command line checks files before calling it).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    plan = plan_sweep(sweep, out)
    lock = FolderLock.acquire(out, option="--out")
    try:
        try:
            plan = _inspect_runs(plan.configs, out)  # another process may have added runs
        except BaseException:
            lock.release(tidy=True)
            raise
        with trust.allowing([sweep.model]):
            result = _execute_sweep(sweep, plan, progress, command, on_run_done)
            result.wall_clock_s = time.perf_counter() - t0
            if after is not None:
                after(result)
        return result
    finally:
        lock.release()


def _execute_sweep(sweep: SweepConfig, plan: SweepPlan, progress: bool,
                   command: Sequence[str] | None,
                   on_run_done: Callable[[Path], None] | None) -> SweepResult:
    out = plan.out_dir
    atomic_write_text(out / "sweep.yaml",
                      "# Resolved sweep; re-run with: dipnet compare --config "
                      f"{out / 'sweep.yaml'} --out {out}\n" + sweep.to_yaml())
    prov_path = out / "provenance.json"
    history: list[dict[str, Any]] = []
    if prov_path.is_file():
        try:
            history = json.loads(prov_path.read_text(encoding="utf-8")).get("invocations", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            history = []
    history.append(provenance(command))
    atomic_write_text(prov_path, json.dumps({"invocations": history}, indent=2))

    result = SweepResult(out_dir=out, run_dirs=list(plan.run_dirs), reused=list(plan.reused))
    todo = plan.todo
    if result.reused and progress:
        print(f"dipnet: reusing {len(result.reused)} finished run(s) in {out / 'runs'}",
              file=sys.stderr)

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="sweep", unit="run")

    def _done(run_dir: Path, error: str | None) -> None:
        if error is None:
            result.trained.append(run_dir)
            if on_run_done is not None:
                on_run_done(run_dir)
        else:
            result.failed[run_dir.name] = error
            print(f"dipnet: run {run_dir.name} failed: {error}", file=sys.stderr)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(run_dir.name[-40:])

    def _starting(task: backends.Task) -> None:
        if bar is not None:
            bar.set_postfix_str(task.key.name[-40:])

    # where the runs execute: local processes, Ray tasks or submitit jobs (same folders)
    threads = max([int(cfg.num_threads or 1) for cfg in plan.configs] or [1])
    with backends.make_backend(sweep.backend, jobs=sweep.jobs, folder=out,
                               cpus_per_task=threads) as backend:
        try:
            backend.run([_task(sweep, cfg, d, _train_one, cfg.to_dict(), str(d))
                         for cfg, d in todo],
                        lambda task, value, err: _done(task.key,
                                                       err if value is None else value[1]),
                        starting=_starting)
        finally:
            if bar is not None:
                bar.close()

        if sweep.evaluate != "none":
            _evaluate_runs(result.run_dirs, sweep, progress, result, backend,
                           dict(zip(plan.run_dirs, plan.configs)))
        else:
            result.evaluation_skipped = "evaluation not requested (--evaluate none)"
    return result
