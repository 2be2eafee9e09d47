"""`dipnet tune`: each method's own hyperparameters searched with Optuna on the validation split,
the same number of trials for every method, the best configuration written as a sweep config.

For every method the search covers the learning rate and the method's own knobs
(`METHOD_SPACES`: sigma for input noise / randomized smoothing, rho for SAM, alpha for Mixup /
CutMix, p for dropout, ``init_scale`` for DIPNet and its fixed-noise control, and DIPNet's
``variance_lr``). A setting the user fixes (``--set sam.rho=0.1``, ``--lr``) is not searched.

A trial is one run (`run_training`) into ``OUT/trials/<method>/trial-NNN/``, executed through
the sweep backends (local processes, Ray, submitit), so it trains exactly as a ``compare`` run
would. After every epoch it reports the validation accuracy to Optuna (a journal file,
``OUT/study.journal``, that the driver and every worker share); the median pruner stops a
trial whose accuracy falls below the median of the finished trials at that epoch, once half the
epochs are done (a warm-up: an early epoch's accuracy says little about a learning rate or a
noise level, and pruning at epoch 1 left most of a budget to one-epoch trials). A trial
stops after its last epoch's validation, before the test evaluation: the test split is never
evaluated while tuning. The objective (`tune_objective`) is the validation accuracy after the
last epoch (what ``compare`` keeps: no early stopping), the robust validation accuracy under
PGD (with EOT for sampled predictions), or a weighted mix of the two.

Reproducible: the TPE sampler of trial n is seeded by (seed, n), and trials run in batches of
``jobs``, asked once every earlier batch finished and told once their own batch finished, so
for a given ``jobs`` the same seed chooses (and prunes) the same trials whatever the backend,
the timing or an interruption (an interrupted tune resumes: its unfinished trials continue
from their checkpoints, then new ones are asked). With ``jobs`` > 1 the model-based choices
see fewer finished trials than with ``jobs`` 1, so the trials differ from a sequential tune's
once the random startup trials are done.

Writes ``OUT/best.yaml`` (a sweep config for ``dipnet compare --config``: each method with its
tuned ``method_params`` and learning rate in ``method_run``, and a ``tuning`` block stating the
budget), ``OUT/trials.csv`` (every trial, its parameters and outcome) and ``OUT/tune.md``.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dipnet._util import trust
from dipnet.errors import UserError
from dipnet._util.fileio import atomic_write_text
from dipnet.experiments.sweep import backends
from dipnet.experiments.run.config import takes_dip_settings
from dipnet.experiments.run.locks import FolderLock
from dipnet.experiments.run.rundir import check_out_path
from dipnet.experiments.sweep.grid import SweepConfig, expand_grid
from dipnet.experiments.sweep.objective import describe as describe_objective
from dipnet.experiments.sweep.objective import final_value, objective_settings

__all__ = ["TuneConfig", "TuneResult", "METHOD_SPACES", "LR_SPACE", "search_space", "tune"]

#: (low, high, log scale) of every method's learning rate.
LR_SPACE: tuple[float, float, bool] = (1e-4, 1e-2, True)
#: Each method's own hyperparameters: key -> (low, high, log scale). Ranges bracket the
#: defaults each method's paper gives (docs/tune.md); methods not listed search lr only.
METHOD_SPACES: dict[str, dict[str, tuple[float, float, bool]]] = {
    "input_noise": {"sigma": (0.02, 0.5, True)},
    "rs": {"sigma": (0.05, 0.5, True)},
    "sam": {"rho": (0.01, 0.5, True)},
    "mixup": {"alpha": (0.1, 2.0, True)},
    "cutmix": {"alpha": (0.1, 2.0, True)},
    "dropout": {"p": (0.0, 0.7, False)},
    # barrier_temperature: where learning ends (the learned arm's level knob; init_scale is
    # only where it starts), so learned and frozen variances get one level knob each.
    "dipnet": {"init_scale": (0.01, 1.0, True), "variance_lr": (1e-4, 1e-1, True),
               "barrier_temperature": (0.1, 10.0, True)},
    "fixed_noise": {"init_scale": (0.01, 1.0, True)},
}
PRUNERS = ("median", "threshold", "none")
_PRUNER_KEYS = {"kind", "n_startup_trials", "n_warmup_steps", "lower"}
STUDY_FILE = "study.journal"
#: Run fields that do not change a trial's outcome (left out when a resumed tune is compared).
_RUNTIME = ("data_dir", "num_threads", "device", "reference_cache", "report_to")


# ---------------------------------------------------------------------- configuration
@dataclass
class TuneConfig:
    """One tuning job.

    Fields:
        sweep: the base sweep: data set, model, the methods to tune, their fixed settings
            (``run``, ``method_params``), one training condition, and where trials run
            (``backend``, ``jobs``). Its seeds are ``[seed]``.
        budget: trials per method (the same for every method).
        seed: seeds the sampler and every trial's training.
        search: range overrides, ``{key: [low, high]}`` (``lr``, ``sigma``...), for every
            method that searches the key.
        pruner: ``{kind: median|threshold|none, n_startup_trials, n_warmup_steps, lower}``.
        objective: ``{kind: accuracy|robust|mix, norm, eps, steps, eot_samples, points,
            weight}`` (`tune_objective.objective_settings`); default validation accuracy.
    """

    sweep: SweepConfig
    budget: int
    seed: int = 0
    search: dict[str, list[float]] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.objective = objective_settings(self.objective)
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise UserError(f"--budget must be a positive number of trials, got {self.budget!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if len(self.sweep.train_perturbations) != 1:
            raise UserError(f"tune one training condition at a time (got "
                            f"{', '.join(self.sweep.train_perturbations)}): pass "
                            f"--train-perturbation and run tune once per condition")
        if self.sweep.run.get("val_fraction") == 0:
            raise UserError("tuning selects on the validation split, and val_fraction is 0: "
                            "leave it at its default or set it > 0")
        self.sweep.seeds = [self.seed]
        for key, rng in self.search.items():
            if key != "lr" and not any(key in METHOD_SPACES.get(m, {})
                                       for m in self.sweep.methods):
                searched = sorted({"lr"} | {k for m in self.sweep.methods
                                            for k in METHOD_SPACES.get(m, {})})
                raise UserError(f"--set search.{key}: none of the methods "
                                f"{', '.join(self.sweep.methods)} searches {key!r}; searched "
                                f"keys are {', '.join(searched)}")
            if (not isinstance(rng, (list, tuple)) or len(rng) != 2
                    or not all(_is_number(v) for v in rng) or not rng[0] < rng[1]):
                raise UserError(f"--set search.{key}={rng!r}: give [low, high] with low < high, "
                                f"e.g. --set 'search.{key}=[0.01, 0.5]'")
            self.search[key] = [float(rng[0]), float(rng[1])]
        stray = sorted(set(self.pruner) - _PRUNER_KEYS)
        if stray:
            raise UserError(f"unknown pruner setting(s) {', '.join(stray)}: use "
                            f"{', '.join(sorted(_PRUNER_KEYS))}")
        kind = self.pruner.get("kind", "median")
        if kind not in PRUNERS:
            raise UserError(f"pruner.kind={kind!r} is unknown: choose from {', '.join(PRUNERS)}")
        for key in ("n_startup_trials", "n_warmup_steps"):
            value = self.pruner.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"pruner.{key} must be an integer >= 0, got {value!r}")
        if kind == "threshold" and not _is_number(self.pruner.get("lower")):
            raise UserError("pruner.kind=threshold needs pruner.lower (prune a trial whose "
                            "validation accuracy is below it), e.g. --set pruner.lower=0.5")

    def pruner_settings(self) -> dict[str, Any]:
        """The pruner with its defaults filled in: median, 5 startup trials, and no pruning
        before half the epochs are done (``n_warmup_steps`` = epochs // 2, at least 1)."""
        epochs = int(self.sweep.run.get("epochs", 10))
        return {"kind": "median", "n_startup_trials": 5,
                "n_warmup_steps": max(1, epochs // 2), **self.pruner}

    def identity(self) -> dict[str, Any]:
        """What decides the trials (compared when a tune folder is reused): everything except
        the budget, the list of methods and where the trials run."""
        sweep = self.sweep.to_dict()
        for key in ("methods", "jobs", "backend", "name", "evaluate", "evaluation_params",
                    "tuning", "method_run"):
            sweep.pop(key, None)
        sweep["run"] = {k: v for k, v in sweep["run"].items() if k not in _RUNTIME}
        identity = {"sweep": sweep, "seed": self.seed, "search": self.search,
                    "pruner": self.pruner_settings()}
        if self.objective["kind"] != "accuracy":  # a clean-accuracy tune keeps its old identity
            identity["objective"] = self.objective
        return identity


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _fixed_keys(sweep: SweepConfig, method: str) -> set[str]:
    """The hyperparameters of ``method`` the user fixed (not searched)."""
    fixed = set(sweep.method_params.get(method, {}))
    if takes_dip_settings(method):
        fixed |= set(sweep.run.get("dip") or {})
    if "lr" in sweep.run or "lr" in sweep.method_run.get(method, {}):
        fixed.add("lr")
    return fixed


def search_space(cfg: TuneConfig, method: str) -> dict[str, tuple[float, float, bool]]:
    """The space ``method`` is searched over: lr and its own keys (`METHOD_SPACES`), with the
    ``search`` overrides, minus what the user fixed. Returns key -> (low, high, log)."""
    space = {"lr": LR_SPACE, **METHOD_SPACES.get(method, {})}
    out = {}
    for key, (low, high, log) in space.items():
        if key in _fixed_keys(cfg.sweep, method):
            continue
        if key in cfg.search:
            low, high = cfg.search[key]
            if log and low <= 0:
                raise UserError(f"--set search.{key}=[{low}, {high}]: {key} is searched on a "
                                f"log scale, so low must be > 0")
        out[key] = (float(low), float(high), bool(log))
    return out


def _trial_sweep(cfg: TuneConfig, method: str, params: dict[str, float]) -> SweepConfig:
    """The one-run sweep of a trial of ``method`` with ``params`` (lr and method keys)."""
    data = cfg.sweep.to_dict()
    data.update(methods=[method], seeds=[cfg.seed], backend={}, tuning={}, jobs=1)
    if not takes_dip_settings(method):  # the sweep's dip settings are for its dip methods
        data["run"].pop("dip", None)
    own = {k: v for k, v in params.items() if k != "lr"}
    data["method_params"] = {method: {**data["method_params"].get(method, {}), **own}}
    data["method_params"] = {m: v for m, v in data["method_params"].items() if v}
    run_extra = dict(data["method_run"].get(method, {}))
    if "lr" in params:
        run_extra["lr"] = params["lr"]
    data["method_run"] = {method: run_extra} if run_extra else {}
    return SweepConfig.from_dict(data)


def trial_config(cfg: TuneConfig, method: str, params: dict[str, float]) -> Any:
    """The RunConfig of a trial of ``method`` with ``params``."""
    return expand_grid(_trial_sweep(cfg, method, params))[0]


# ---------------------------------------------------------------------- optuna plumbing
def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError("dipnet tune needs the 'optuna' package (not installed): pip install "
                        "'dipnet[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(journal: str) -> Any:
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(journal))


def _make_pruner(settings: dict[str, Any]) -> Any:
    optuna = _optuna()
    kind = settings.get("kind", "median")
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "threshold":
        return optuna.pruners.ThresholdPruner(lower=float(settings["lower"]),
                                              n_warmup_steps=settings.get("n_warmup_steps", 0))
    return optuna.pruners.MedianPruner(n_startup_trials=settings.get("n_startup_trials", 5),
                                       n_warmup_steps=settings.get("n_warmup_steps", 0))


def _sampler(seed: int, number: int, budget: int) -> Any:
    """Trial ``number``'s TPE sampler: seeded by (seed, number), so the choice depends only on
    the seed and the finished trials (not on what ran in this process before)."""
    optuna = _optuna()
    import numpy as np

    trial_seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=startup_trials(budget))


def startup_trials(budget: int) -> int:
    """Random trials before TPE models the results: a third of the budget, 2 to 10."""
    return min(10, max(2, budget // 3))


class _TrialEnd(Exception):
    """Raised from the epoch callback to end a trial: after its last epoch's validation (before
    the test split is touched) or when the pruner stops it."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


def _run_trial(cfg_dict: dict[str, Any], run_dir: str, journal: str, study_name: str,
               trial_id: int, pruner: dict[str, Any],
               objective: dict[str, Any] | None = None) -> dict[str, Any]:
    """Backend task: train one trial, reporting each epoch's validation accuracy to Optuna.

    Takes the trial's RunConfig (as a dict), its folder, the shared journal, the study, the
    trial's id, the pruner settings and the objective settings. Returns ``{"state":
    "complete"|"pruned", "values": {epoch: validation accuracy}}``, and for a completed trial
    ``"objective"`` (the value to maximise) and ``"robust"`` (robust validation accuracy, None
    for the accuracy objective). Raises UserError when the data set has no validation split.
    """
    objective = objective or {"kind": "accuracy"}
    from dipnet.experiments.run.config import RunConfig
    from dipnet.experiments.run.rundir import CHECKPOINT_DIR
    from dipnet.experiments.run.checkpoint import load_checkpoint
    from dipnet.experiments.run.train import run_training

    optuna = _optuna()
    run_cfg = RunConfig.from_dict(cfg_dict)
    out = Path(run_dir)
    study = optuna.load_study(study_name=study_name, storage=_storage(journal),
                              pruner=_make_pruner(pruner))
    trial = optuna.trial.Trial(study, trial_id)
    reported = set(study._storage.get_trial(trial_id).intermediate_values)
    values: dict[int, float] = {}

    def on_epoch(row: dict[str, Any]) -> None:
        acc = row.get("val_accuracy")
        if acc is None:
            raise UserError(f"{run_cfg.dataset} has no validation split here, and tuning "
                            f"selects on it: set val_fraction > 0 or give x_val / y_val")
        epoch = int(row["epoch"])
        values[epoch] = float(acc)
        if epoch not in reported:  # a resumed trial does not report its epochs twice
            trial.report(float(acc), epoch)
            reported.add(epoch)
        if epoch >= run_cfg.epochs:
            raise _TrialEnd("complete")
        if trial.should_prune():
            raise _TrialEnd("pruned")

    try:
        # an interrupted trial: the epochs in its checkpoint count (and may already end it)
        ckpt = load_checkpoint(out) if (out / CHECKPOINT_DIR).exists() else None
        for row in (ckpt[1]["history"] if ckpt else []):
            on_epoch(row)
        with trust.allowing([run_cfg.model]):
            run_training(run_cfg, out, progress=False, command="dipnet tune",
                         on_epoch=on_epoch)
    except _TrialEnd as end:
        if end.state != "complete":
            return {"state": end.state, "values": values}
        robust = None
        if objective["kind"] != "accuracy":
            from dipnet.experiments.sweep.objective import robust_validation_accuracy

            robust = robust_validation_accuracy(cfg_dict, out, objective)
        clean = values[max(values)]
        return {"state": "complete", "values": values, "robust": robust,
                "objective": final_value(objective, clean, robust)}
    raise RuntimeError(f"trial run {out} finished without reporting its last epoch")


# ---------------------------------------------------------------------- the tune
@dataclass
class TuneResult:
    """What a tune did: its folder, the files written, every trial row, the best per method."""

    out_dir: Path
    best_yaml: Path
    trials_csv: Path
    summary_md: Path
    trials: list[dict[str, Any]]
    best: dict[str, dict[str, Any]]
    wall_clock_s: float = 0.0


def _plan(cfg: TuneConfig, out: Path) -> dict[str, dict[str, tuple[float, float, bool]]]:
    """Validate everything the tune will do; writes nothing. Returns each method's space."""
    check_out_path(out)
    _optuna()
    spaces = {m: search_space(cfg, m) for m in cfg.sweep.methods}
    empty = [m for m, s in spaces.items() if not s]
    if empty:
        raise UserError(f"nothing to tune for {', '.join(empty)}: every searched setting is "
                        f"fixed (--lr / --set); drop one of them")
    backends.require(cfg.sweep.backend)
    # each method's run at both ends of its space: bad values, the data, every model, built
    # in memory as a sweep's plan does (nothing written)
    from dipnet.experiments.zoo.data import load_dataset
    from dipnet.experiments.sweep.grid import _check_builds
    from dipnet.experiments.run.train import validate_run

    probes = [trial_config(cfg, m, {k: v[end] for k, v in space.items()})
              for m, space in spaces.items() for end in (0, 1)]
    with trust.allowing([cfg.sweep.model]):
        for probe in probes:
            validate_run(probe)
        _check_builds(probes)
        run = probes[0]
        data = load_dataset(run.dataset, run.data_dir, run.val_fraction, run.split_seed,
                            run.max_train, run.max_val)
    if not len(data.val):
        raise UserError(f"{run.dataset} has no validation split with these settings, and "
                        f"tuning selects on it: set val_fraction > 0 or give x_val / y_val")
    settings = out / "tune.yaml"
    if settings.is_file():
        try:
            before = yaml.safe_load(settings.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            before = None
        now = json.loads(json.dumps(cfg.identity()))
        if not isinstance(before, dict) or before.get("identity") != now:
            from dipnet.experiments.run.rundir import diff_text, nested_diff

            diff = nested_diff(before.get("identity"), now) if isinstance(before, dict) else []
            what = f"saved vs requested: {diff_text(diff)}" if diff else f"see {settings}"
            raise UserError(f"{out} holds a tune with other settings ({what}): use another "
                            f"--out, or delete that folder to start again")
    journal = out / STUDY_FILE
    if journal.is_file():
        optuna = _optuna()
        storage = _storage(str(journal))
        for method in cfg.sweep.methods:
            try:
                n = len(optuna.load_study(study_name=method, storage=storage).trials)
            except KeyError:
                continue
            if n > cfg.budget:
                raise UserError(f"{out} already holds {n} trials of {method}, more than "
                                f"--budget {cfg.budget}: pass --budget {n} or more (every "
                                f"method gets the same), or use another --out")
    return spaces


def tune(cfg: TuneConfig, out_dir: str | Path, *, progress: bool = True) -> TuneResult:
    """Tune every method of ``cfg`` with ``cfg.budget`` trials each; write the results.

    The lifecycle of a sweep: plan (every setting, the data, every model at both ends of its
    space, the folder: nothing written), lock ``out_dir``, then act (trials through the
    backend, one batch of ``jobs`` at a time; then best.yaml, trials.csv, tune.md). A folder
    holding a tune with the same settings is resumed. Returns a `TuneResult`.
    Raises:
        UserError: anything the user can fix, or a method none of whose trials completed.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    spaces = _plan(cfg, out)
    lock = FolderLock.acquire(out, option="--out")
    try:
        atomic_write_text(out / "tune.yaml", "# dipnet tune settings (a rerun with the same "
                          "settings resumes this folder)\n" + yaml.safe_dump(
                              {"identity": json.loads(json.dumps(cfg.identity())),
                               "budget": cfg.budget, "methods": cfg.sweep.methods},
                              sort_keys=False))
        threads = int(cfg.sweep.run.get("num_threads") or 1)
        with backends.make_backend(cfg.sweep.backend, jobs=cfg.sweep.jobs, folder=out,
                                   cpus_per_task=threads) as backend:
            rows: list[dict[str, Any]] = []
            best: dict[str, dict[str, Any]] = {}
            for method in cfg.sweep.methods:
                method_rows = _tune_method(cfg, method, spaces[method], out, backend, progress)
                rows += method_rows
                _write_tables(cfg, out, rows, spaces)  # progress visible while tuning
                done = [r for r in method_rows if r["state"] == "complete"]
                if not done:
                    raise UserError(f"no trial of {method} completed ({len(method_rows)} "
                                    f"pruned or failed; see {out / 'trials.csv'}): raise "
                                    f"--budget, change the search space or relax the pruner")
                best[method] = max(done, key=lambda r: (r["value"], -r["trial"]))
        result = _finish(cfg, out, rows, best, spaces)
        result.wall_clock_s = time.perf_counter() - t0
        return result
    finally:
        lock.release()


def _tune_method(cfg: TuneConfig, method: str, space: dict[str, tuple[float, float, bool]],
                 out: Path, backend: backends.Backend, progress: bool) -> list[dict[str, Any]]:
    """Run ``method``'s study to ``cfg.budget`` trials; returns its trial rows."""
    optuna = _optuna()
    from optuna.trial import TrialState

    journal = str((out / STUDY_FILE).absolute())
    storage = _storage(journal)
    pruner = cfg.pruner_settings()
    optuna.create_study(study_name=method, storage=storage, direction="maximize",
                        load_if_exists=True)
    jobs = max(1, cfg.sweep.jobs)
    errors: dict[int, str] = {}
    while True:
        study = optuna.load_study(study_name=method, storage=storage)
        trials = study.get_trials(deepcopy=False)
        # unfinished trials of an interrupted tune first: they resume from their checkpoints
        batch = [t.number for t in trials if t.state == TrialState.RUNNING][:jobs]
        asked = len(trials)
        while len(batch) < jobs and asked < cfg.budget:
            sampled = optuna.load_study(study_name=method, storage=storage,
                                        sampler=_sampler(cfg.seed, asked, cfg.budget))
            trial = sampled.ask()
            for key, (low, high, log) in space.items():
                trial.suggest_float(key, low, high, log=log)
            batch.append(trial.number)
            asked += 1
        if not batch:
            break
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        tasks = []
        for number in batch:
            frozen = by_number[number]
            run_cfg = trial_config(cfg, method, dict(frozen.params))
            run_dir = out / "trials" / method / f"trial-{number:03d}"
            tasks.append(backends.Task(
                key=number, fn=_run_trial,
                args=(run_cfg.to_dict(), str(run_dir), journal, method, frozen._trial_id,
                      pruner, cfg.objective),
                cpus=int(run_cfg.num_threads or 1),
                gpus=backends.task_gpus(cfg.sweep.backend, run_cfg.device)))

        outcomes: dict[int, tuple[Any, str | None]] = {}
        backend.run(tasks, lambda task, value, err: outcomes.__setitem__(task.key, (value, err)))
        # Told only once the whole batch is back: until then its trials stay RUNNING, so the
        # pruner of a trial sees the earlier batches only, never a batch-mate that happened
        # to finish first (the outcome does not depend on timing).
        for number in sorted(outcomes):
            value, err = outcomes[number]
            if err is not None:
                errors[number] = err
                study.tell(number, state=TrialState.FAIL)
            elif value["state"] == "pruned":
                study.tell(number, state=TrialState.PRUNED)
            else:  # the objective (validation accuracy after the last epoch by default)
                accs = {int(k): float(v) for k, v in value["values"].items()}
                if value.get("robust") is not None:
                    storage.set_trial_user_attr(by_number[number]._trial_id,
                                                "robust_val_accuracy", float(value["robust"]))
                study.tell(number, float(value.get("objective", accs[max(accs)])))
            if progress:
                frozen = optuna.load_study(study_name=method, storage=storage).trials[number]
                what = (f"failed: {err}" if err is not None else
                        f"{value['state']}, validation accuracy "
                        f"{_last_clean(frozen):.4f} after epoch {_epochs(frozen)}"
                        + ("" if value.get("robust") is None else
                           f", robust {value['robust']:.4f}, objective {frozen.value:.4f}"))
                print(f"dipnet tune: {method} trial-{number:03d} ({number + 1}/{cfg.budget}) "
                      f"{what} ({_params_text(frozen.params)})", file=sys.stderr)
    study = optuna.load_study(study_name=method, storage=storage)
    return [_row(method, t, out, errors.get(t.number)) for t in study.trials]


def _last_value(frozen: Any) -> float:
    """The objective of a finished trial, else its last reported validation accuracy."""
    return float(frozen.value) if frozen.value is not None else _last_clean(frozen)


def _last_clean(frozen: Any) -> float:
    """The validation accuracy of the trial's last reported epoch."""
    if frozen.intermediate_values:
        return float(frozen.intermediate_values[max(frozen.intermediate_values)])
    return float("nan")


def _epochs(frozen: Any) -> int:
    return max(frozen.intermediate_values) if frozen.intermediate_values else 0


def _params_text(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in params.items())


def _row(method: str, frozen: Any, out: Path, error: str | None) -> dict[str, Any]:
    state = frozen.state.name.lower()
    return {"method": method, "trial": frozen.number, "state": state,
            "value": _last_value(frozen) if state in ("complete", "pruned") else None,
            "val_accuracy": _last_clean(frozen) if state in ("complete", "pruned") else None,
            "robust_val_accuracy": frozen.user_attrs.get("robust_val_accuracy"),
            "epochs": _epochs(frozen),
            "intermediate": {int(k): float(v) for k, v in frozen.intermediate_values.items()},
            "params": dict(frozen.params),
            "duration_s": frozen.duration.total_seconds() if frozen.duration else None,
            "folder": str(out / "trials" / method / f"trial-{frozen.number:03d}"),
            "error": error or ""}


def _write_tables(cfg: TuneConfig, out: Path, rows: list[dict[str, Any]],
                  spaces: dict[str, dict[str, tuple[float, float, bool]]]) -> Path:
    keys = sorted({k for s in spaces.values() for k in s}, key=lambda k: (k != "lr", k))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "trial", "state", "objective", "val_accuracy",
                     "robust_val_accuracy", "epochs", *keys, "duration_s", "folder", "error"])

    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.6f}"

    for r in rows:
        writer.writerow([r["method"], r["trial"], r["state"], num(r["value"]),
                         num(r.get("val_accuracy")), num(r.get("robust_val_accuracy")),
                         r["epochs"],
                         *[("" if k not in r["params"] else repr(r["params"][k])) for k in keys],
                         "" if r["duration_s"] is None else f"{r['duration_s']:.1f}",
                         r["folder"], r["error"]])
    path = out / "trials.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def _tuning_block(cfg: TuneConfig, rows: list[dict[str, Any]], best: dict[str, dict[str, Any]],
                  spaces: dict[str, dict[str, tuple[float, float, bool]]]) -> dict[str, Any]:
    import optuna

    pruner = cfg.pruner_settings()
    per_method = {}
    for method in cfg.sweep.methods:
        mine = [r for r in rows if r["method"] == method]
        per_method[method] = {
            "trials": len(mine),
            "complete": sum(r["state"] == "complete" for r in mine),
            "pruned": sum(r["state"] == "pruned" for r in mine),
            "failed": sum(r["state"] == "fail" for r in mine),
            "best_trial": best[method]["trial"],
            "best_objective": round(float(best[method]["value"]), 6),
            "best_val_accuracy": round(float(best[method]["val_accuracy"]), 6),
            "search_space": {k: [lo, hi, "log" if log else "linear"]
                             for k, (lo, hi, log) in spaces[method].items()},
        }
    return {
        "tool": f"dipnet tune (Optuna {optuna.__version__})",
        "budget": cfg.budget,
        "budget_unit": "trials per method, the same for every method",
        "epochs_per_trial": int(cfg.sweep.run.get("epochs", 10)),
        "objective": describe_objective(cfg.objective) + " (the test split was never "
                     "evaluated while tuning)",
        "objective_settings": dict(cfg.objective),
        "sampler": f"TPE, seed {cfg.seed} (trial n seeded by (seed, n)), "
                   f"{startup_trials(cfg.budget)} random startup trials",
        "pruner": ("none" if pruner["kind"] == "none" else
                   f"{pruner['kind']} (n_startup_trials {pruner['n_startup_trials']}, "
                   f"n_warmup_steps {pruner['n_warmup_steps']}"
                   + (f", lower {pruner['lower']}" if pruner["kind"] == "threshold" else "")
                   + ")"),
        "seed": cfg.seed,
        "methods": per_method,
    }


def _finish(cfg: TuneConfig, out: Path, rows: list[dict[str, Any]],
            best: dict[str, dict[str, Any]],
            spaces: dict[str, dict[str, tuple[float, float, bool]]]) -> TuneResult:
    from dipnet.experiments.zoo.data import dataset_label

    base = cfg.sweep.to_dict()
    method_params = copy.deepcopy(base["method_params"])
    method_run = copy.deepcopy(base["method_run"])
    for method, row in best.items():
        own = {k: v for k, v in row["params"].items() if k != "lr"}
        if own:
            method_params[method] = {**method_params.get(method, {}), **own}
        if "lr" in row["params"]:
            method_run[method] = {**method_run.get(method, {}), "lr": row["params"]["lr"]}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_",
                  f"tuned-{dataset_label(cfg.sweep.dataset)}-{cfg.sweep.model}")
    sweep = {
        "name": name, "dataset": base["dataset"], "model": base["model"],
        "methods": list(cfg.sweep.methods), "seeds": [0, 1, 2],
        "train_perturbations": base["train_perturbations"],
        # The comparison of tuned methods measures robustness too (tuning itself never
        # evaluated): the tuned sweep's own suite, else the quick one.
        "perturbation_mode": base["perturbation_mode"],
        "evaluate": base["evaluate"] if base["evaluate"] != "none" else "quick", "jobs": 1,
        "run": base["run"], "method_params": method_params, "method_run": method_run,
        "evaluation_params": base["evaluation_params"],
        "tuning": _tuning_block(cfg, rows, best, spaces),
    }
    SweepConfig.from_dict(sweep)  # what compare will check
    best_yaml = out / "best.yaml"
    atomic_write_text(best_yaml, (
        f"# Written by dipnet tune: every method tuned with {cfg.budget} trials on the "
        f"validation split (seed {cfg.seed}).\n# Run it: dipnet compare --config {best_yaml} "
        f"--out runs/{name}\n") + yaml.safe_dump(sweep, sort_keys=False))
    trials_csv = _write_tables(cfg, out, rows, spaces)
    summary = out / "tune.md"
    atomic_write_text(summary, _summary(cfg, rows, best, best_yaml))
    return TuneResult(out, best_yaml, trials_csv, summary, rows, best)


def _summary(cfg: TuneConfig, rows: list[dict[str, Any]], best: dict[str, dict[str, Any]],
             best_yaml: Path) -> str:
    pruner = cfg.pruner_settings()
    lines = [
        f"# Tuning: {cfg.sweep.dataset} / {cfg.sweep.model}", "",
        f"Budget: **{cfg.budget} trials per method**, the same for every method; each trial "
        f"{cfg.sweep.run.get('epochs', 10)} epoch(s), seed {cfg.seed}, training condition "
        f"{cfg.sweep.train_perturbations[0]}. Selected on {describe_objective(cfg.objective)}; "
        f"the test split was never evaluated. Sampler TPE (seeded); pruner {pruner['kind']}"
        + ("" if pruner["kind"] == "none" else
           f" after a warm-up of {pruner['n_warmup_steps']} epoch(s)") + ".", "",
        "| method | trials | complete | pruned | failed | best objective | best val. accuracy "
        "| best setting |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for method in cfg.sweep.methods:
        mine = [r for r in rows if r["method"] == method]
        b = best[method]
        lines.append(f"| {method} | {len(mine)} | "
                     f"{sum(r['state'] == 'complete' for r in mine)} | "
                     f"{sum(r['state'] == 'pruned' for r in mine)} | "
                     f"{sum(r['state'] == 'fail' for r in mine)} | {b['value']:.4f} | "
                     f"{b['val_accuracy']:.4f} | {_params_text(b['params'])} |")
    lines += ["", f"Every trial: `trials.csv`. The tuned sweep: `dipnet compare --config "
              f"{best_yaml}` (seeds 0, 1, 2; change them with --seeds).", ""]
    return "\n".join(lines)

