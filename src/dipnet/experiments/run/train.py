"""`run_training`: one run, from a `RunConfig` to a folder of results, resumable and DDP-ready.

A run goes through phases that each read alone, and nothing on disk changes before the first
two succeeded:

    plan      `plan_run`: validate every setting, check the folder (a file? another run? a
              damaged one? the same run finished?); reads, never writes
    prepare   `prepare_run`: load the data, build the model and the method, in memory
    take      `_take_folder`: lock the folder (``.lock``, rank 0 only), look again under the
              lock, then overwrite / write config.yaml
    train     the epochs, a checkpoint after each (resuming from the last one)
    finish    metrics.json (last), model.safetensors, the lock released

The folder (``out_dir``) holds:
    config.yaml          the resolved config (re-run with ``dipnet train --config``)
    train.log            one line per epoch, appended across resumes
    checkpoint/          the last end-of-epoch checkpoint (weights in safetensors, optimizer /
                         RNG / history in a weights_only-loadable torch file), switched
                         atomically through checkpoint/latest.json
    model.safetensors    final weights (projection variances included for dipnet)
    metrics.json         test / validation accuracy, per-epoch history, cost; written last,
                         with ``status: "finished"``

Determinism: the batch order of epoch e depends only on (seed, e) (a DistributedSampler with
that seed), every noise draw comes from torch's global RNG, and the RNG states of every rank are
saved at each epoch boundary, so a killed and resumed run ends with the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dipnet.errors import UserError, describe_os_error
from dipnet._util.fileio import atomic_write_json, atomic_write_safetensors
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import DatasetSplits, Split, check_dataset_name, load_dataset
from dipnet.experiments.zoo.fixed import fixed_training_inputs, reference_config, reference_dir
from dipnet.experiments.run import checkpoint
from dipnet.experiments.run import metrics as run_metrics
from dipnet.experiments.run.distributed import DistInfo, broadcast, resolve_device
from dipnet.experiments.run.locks import FolderLock
from dipnet.experiments.run.loop import EpochLoop, epoch_callbacks, run_epochs
from dipnet.experiments.zoo.methods import Method, get_method
from dipnet.experiments.zoo.models import count_parameters, create_model, list_models
from dipnet.experiments.run.rng import kept_rng, noise_seed, seed_everything, set_rng_state
from dipnet.experiments.run.rundir import (CHECKPOINT_DIR, RESULT_FILES, FolderState,
                                           check_out_path, drop_aside, inspect_run_folder,
                                           read_metrics, restore_aside, set_aside)

__all__ = ["run_training", "train_run", "validate_run", "plan_run", "prepare_run", "RunPlan",
           "Prepared", "read_metrics", "RESULT_FILES", "CHECKPOINT_DIR"]


# ---------------------------------------------------------------------- helpers
class _StrictFileHandler(logging.FileHandler):
    """train.log's handler: a failed write (a full disk) stops the run with that OSError,
    instead of logging's traceback on stderr and a run that goes on without its log."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # noqa: PLE0704 (called by emit() inside its except block: re-raises its error)


def _make_logger(out: Path, enabled: bool) -> logging.Logger:
    logger = logging.getLogger(f"dipnet.train.{out.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    _close_logger(logger)
    if enabled:
        handler = _StrictFileHandler(out / "train.log", mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())
    return logger


def _close_logger(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError):
        return describe_os_error(err)
    return str(err)


# ---------------------------------------------------------------------- phase 1: plan
@dataclass
class RunPlan:
    """What `plan_run` decided, before anything on disk was changed.

    Attributes:
        cfg: the run's config. out: its folder. overwrite: replace what is there.
        device: the torch device of this process.
        state: what the folder holds (`rundir.FolderState`).
    """

    cfg: RunConfig
    out: Path
    overwrite: bool
    device: torch.device
    state: FolderState
    aside: Path | None = None  # the run being replaced, while this one trains (--overwrite)

    @property
    def finished(self) -> dict[str, Any] | None:
        """The metrics of the same run, already finished in ``out`` (None: train)."""
        if self.overwrite or self.state.kind != "finished":
            return None
        return self.state.metrics


def _check_param_names(cfg: RunConfig) -> None:
    """Refuse method parameters the method does not have, naming the methods that do."""
    from dipnet.experiments.zoo.methods import list_methods

    if cfg.method not in list_methods():
        get_method(cfg.method)  # the registry's own "unknown method" error
    own = set(get_method(cfg.method).defaults)
    unknown = [k for k in cfg.resolved_method_params() if k not in own]
    if not unknown:
        return
    hints = []
    for key in unknown:
        owners = [m for m in list_methods() if key in get_method(m).defaults]
        hints.append(f"{key} (" + (f"a parameter of {', '.join(owners)}" if owners
                                   else "no method has it") + ")")
    raise UserError(f"method {cfg.method!r} has no parameter {'; '.join(hints)}: remove it from "
                    f"--set method.KEY (--param) / method_params; {cfg.method}'s parameters are "
                    f"{', '.join(sorted(own)) or 'none'}.")


def validate_run(cfg: RunConfig, local_rank: int = 0) -> torch.device:
    """Check the settings of ``cfg`` that `RunConfig` alone cannot (nothing is loaded).

    Returns:
        The torch device of this process.
    Raises:
        UserError: a setting that does not apply to the run, an unknown data set / model, a
            method parameter that is unknown or invalid, an unusable device.
    """
    problems = cfg.inapplicable()
    if problems:
        raise UserError("; ".join(problems) + ".")
    _check_param_names(cfg)
    get_method(cfg.method, **cfg.resolved_method_params())  # bad values
    check_dataset_name(cfg.dataset)
    from dipnet.experiments.run.tracking import check_trackers

    check_trackers(cfg.report_to)  # a missing tracker package stops here, not after training
    if ":" not in cfg.model and cfg.model not in list_models():
        raise UserError(f"unknown model {cfg.model!r}; choose one of "
                        f"{', '.join(list_models())} or give 'package.module:factory'.")
    return resolve_device(cfg.device, local_rank)


def plan_run(cfg: RunConfig, out_dir: str | os.PathLike, overwrite: bool = False,
             local_rank: int = 0) -> RunPlan:
    """Phase 1: validate every setting and compare with the folder; changes nothing on disk.

    Args:
        cfg: the run's config.
        out_dir: its folder.
        overwrite: whether the folder's run may be replaced (then its state is not a refusal).
        local_rank: this process's rank on its machine (chooses its GPU).
    Returns:
        `RunPlan`; ``plan.finished`` holds the stored metrics when the same run already finished.
    Raises:
        UserError: a setting that is invalid or does not apply, an unknown data set / model /
            method, an ``out_dir`` that cannot be a folder, a folder holding another run or a
            damaged one (without ``overwrite``).
    """
    out = Path(out_dir)
    device = validate_run(cfg, local_rank)
    check_out_path(out)
    from dipnet.experiments.run.tracking import check_tracker_targets

    check_tracker_targets(cfg, out)  # a tracker that cannot start stops here, nothing written
    state = inspect_run_folder(out, cfg)
    if not overwrite and not state.usable:
        raise state.refusal()
    return RunPlan(cfg, out, overwrite, device, state)


# ---------------------------------------------------------------------- phase 2: prepare
@dataclass
class Prepared:
    """The data, model and method of a run, built in memory (nothing written)."""

    method: Method
    model: nn.Module
    data: DatasetSplits
    train: Split
    val: Split
    test: Split
    base_params: int
    #: the input normalisation the model was built with (recorded in metrics.json)
    normalize: dict[str, list] | None = None


def build_model(cfg: RunConfig, method: Method, input_shape: tuple[int, ...],
                num_classes: int, num_train: int,
                normalize: dict[str, list] | None = None) -> tuple[nn.Module, int]:
    """The run's model (seeded with ``cfg.seed``, behind its input normalisation: ``normalize``
    as resolved by `normalize.resolve_normalization`, else ``cfg.normalize``) prepared by its
    method; and its own size.

    Raises:
        UserError: the model cannot be built with these parameters for this input.
    """
    from dipnet.experiments.zoo.normalize import resolve_normalization, with_normalization

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = create_model(cfg.model, input_shape, num_classes, **cfg.model_params)
    model = with_normalization(model, normalize or resolve_normalization(
        cfg.normalize, None, input_shape), input_shape)
    base_params = count_parameters(model)
    return method.prepare_model(model, cfg, num_train), base_params


def prepare_run(plan: RunPlan) -> Prepared:
    """Phase 2: load the data and build the model and method (in memory only).

    Raises:
        UserError: missing or corrupt data, a model that cannot be built.
    """
    return prepare_model_and_data(plan.cfg, plan.device)


def prepare_model_and_data(cfg: RunConfig, device: torch.device) -> Prepared:
    """The run's data, method and model (calibrated, before any checkpoint is loaded), on
    ``device``: what training starts from, and what a tuning objective rebuilds a trial's
    model with before loading its weights.

    Raises:
        UserError: missing or corrupt data, a model that cannot be built.
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    method = get_method(cfg.method, **cfg.resolved_method_params())
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.split_seed,
                        cfg.max_train, cfg.max_val)
    train, val, test = data.train.to(device), data.val.to(device), data.test.to(device)
    from dipnet.experiments.zoo.normalize import resolve_normalization

    normalize = resolve_normalization(cfg.normalize, data.normalize, data.input_shape)
    model, base_params = build_model(cfg, method, data.input_shape, data.num_classes,
                                     len(train), normalize)
    model = model.to(device)
    method.check_memory(train.x[:cfg.batch_size])  # m copies of a batch: refused before any write
    # Data-dependent initial state (dipnet's init_scale: variances relative to each layer's
    # activation scale), from the first training examples, BEFORE a checkpoint is loaded.
    method.calibrate(model, train.x[:512])
    return Prepared(method, model, data, train, val, test, base_params, normalize)


# ---------------------------------------------------------------------- phase 3: take the folder
def _take_folder(plan: RunPlan, info: DistInfo, wait: bool) -> tuple[FolderLock | None,
                                                                    dict[str, Any] | None]:
    """Lock the folder (rank 0), look again under the lock, then make it this run's.

    Returns (the lock, None) to go on training, or (None, metrics) when the same run finished
    while this one was preparing. Every rank gets rank 0's decision.
    Raises:
        UserError: the folder is in use, or now holds another run / a damaged one.
    """
    cfg, out = plan.cfg, plan.out
    lock: FolderLock | None = None
    decision: tuple[str, Any] = ("go", None)
    if info.is_main:
        try:
            lock = FolderLock.acquire(out, wait=wait, waiting_message=f"waiting for {out}, "
                                      "which another dipnet process is training")
            state = inspect_run_folder(out, cfg)  # it may have changed since the plan
            if plan.overwrite:
                # Moved aside, not deleted: deleted once the new run finished, put back if
                # it fails (train_run).
                plan.aside = set_aside(out)
            elif state.kind == "finished":
                decision = ("finished", state.metrics)
            elif not state.usable:
                decision = ("error", str(state.refusal()))
            if decision[0] == "go":
                cfg.save(out / "config.yaml")
        except (UserError, OSError) as err:
            decision = ("error", _describe(err))
            restore_aside(out, plan.aside)
            plan.aside = None
        if decision[0] != "go" and lock is not None:
            lock.release(tidy=True)
            lock = None
    decision = broadcast(info, decision)
    if decision[0] == "error":
        raise UserError(decision[1])
    info.barrier()
    return lock, decision[1]


# ---------------------------------------------------------------------- the run
def run_training(cfg: RunConfig, out_dir: str | os.PathLike, overwrite: bool = False,
                 progress: bool = True, command: str | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one run and write its results folder; resume or reuse what is there.

    The lifecycle: plan (validate every setting, check the folder: `plan_run`), prepare (data,
    model, method: `prepare_run`), take the folder (lock it, look again, and only then
    overwrite / write the config), train (resuming from a checkpoint), finish (metrics, weights).
    Nothing on disk changes before the plan and the preparation succeeded.

    Args:
        cfg: the run's config.
        out_dir: the results folder (created).
        overwrite: discard a finished or partial run in ``out_dir`` and train again.
        progress: show tqdm bars (epochs and batches) on stderr.
        command: the command line recorded in metrics.json (default: sys.argv).
        on_epoch: called (rank 0 only) with each epoch's history row once its checkpoint is
            saved; an exception it raises stops the run there, resumable from that checkpoint
            (`dipnet.experiments.sweep.tune` reports validation accuracy to Optuna and stops pruned
            trials, and every trial before the test split is touched).
    Returns:
        The metrics dict (also written to ``out_dir/metrics.json``). A finished run with the
        same config is not retrained: its metrics are returned (and a line says so).
    Raises:
        UserError: bad config values, missing data, a folder holding a different or damaged
            run, a folder in use by another process, a corrupt checkpoint.
    """
    return train_run(cfg, out_dir, overwrite=overwrite, progress=progress, command=command,
                     on_epoch=on_epoch)


def train_run(cfg: RunConfig, out_dir: str | os.PathLike, *, overwrite: bool = False,
              progress: bool = True, command: str | None = None,
              wait_for_lock: bool = False,
              on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """`run_training`, plus ``wait_for_lock``: wait for another process that holds the folder
    instead of refusing (used for shared caches such as the fixed-FGSM reference model)."""
    info = DistInfo()
    plan = plan_run(cfg, out_dir, overwrite, info.local_rank)
    if plan.finished is not None:
        if info.is_main:
            print(f"dipnet: run in {plan.out} already finished (test accuracy "
                  f"{plan.finished['test_accuracy']:.4f}); reusing it. Pass --overwrite to "
                  "train it again.", file=sys.stderr)
        return plan.finished
    info.init(plan.device)
    try:
        prep = prepare_run(plan)
        lock, finished = _take_folder(plan, info, wait_for_lock)
        if finished is not None:
            return finished if info.is_main else {}
        try:
            return _train_and_finish(plan, prep, info, progress, command, on_epoch)
        except BaseException:
            if info.is_main:  # any failure, Ctrl-C included: the replaced run comes back
                restore_aside(plan.out, plan.aside)
            raise
        finally:
            if lock is not None:
                lock.release()
    finally:
        info.close()


# ---------------------------------------------------------------------- fixed training sets
def ensure_reference(cfg: RunConfig, out_dir: str | os.PathLike,
                     progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train the fixed-FGSM reference of ``cfg`` (`fixed.reference_config`) into its cache
    folder (`fixed.reference_dir`), or reuse it there.

    Returns (its folder, its metrics). Waits (with a message) while another process trains it.
    Raises:
        UserError: the cache folder holds something else or is damaged (names the fix).
    """
    ref_dir = reference_dir(cfg, out_dir)
    ref_cfg = reference_config(cfg)
    if not (ref_dir / "metrics.json").is_file():
        print(f"dipnet: training the clean standard reference model for fixed FGSM into "
              f"{ref_dir}", file=sys.stderr)
    with kept_rng():  # training the reference reseeds every RNG; the run must not notice
        metrics = train_run(ref_cfg, ref_dir, progress=progress, wait_for_lock=True,
                            command=f"reference model of {Path(out_dir).name}")
    return ref_dir, metrics


def fixed_training_set(cfg: RunConfig, train: Split, out_dir: str | os.PathLike,
                       device: torch.device,
                       progress: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """`fixed.fixed_training_inputs` of ``cfg``, its FGSM reference trained (or reused) first.

    Args:
        cfg: the run (``perturbation_mode: fixed``, train_perturbation gaussian or fgsm).
        train: its training split.
        out_dir: the run's folder (the FGSM reference is cached beside it).
        device: where to compute and return the inputs.
        progress: progress bars while a reference is trained.
    Returns:
        (the perturbed inputs on ``device``, their record for metrics.json).
    """
    reference = (ensure_reference(cfg, out_dir, progress) if cfg.train_perturbation == "fgsm"
                 else None)
    return fixed_training_inputs(cfg, train, device, reference)


# ---------------------------------------------------------------------- phases 4-5: train, finish
def _train_and_finish(plan: RunPlan, prep: Prepared, info: DistInfo, progress: bool,
                      command: str | None,
                      on_epoch: Callable[[dict[str, Any]], None] | None = None
                      ) -> dict[str, Any]:
    """Phases 4-5: resume or seed, run the epochs (`loop.run_epochs`, with the end-of-epoch
    callbacks of `loop.epoch_callbacks`), then write the results (`_finish`)."""
    cfg, out, device = plan.cfg, plan.out, plan.device
    main = info.is_main
    train_x, fixed_info = prep.train.x, None
    if cfg.perturbation_mode == "fixed" and cfg.train_perturbation != "none":
        train_x, fixed_info = fixed_training_set(cfg, prep.train, out, device, progress)

    log = _make_logger(out, main)
    say = (lambda msg: (log.info(msg))) if main else (lambda msg: None)
    from dipnet.experiments.run.tracking import Trackers, open_trackers

    trackers = Trackers([])
    try:
        optimizer = prep.method.make_optimizer(prep.model, cfg)
        for group in optimizer.param_groups:
            group["base_lr"] = group["lr"]
        start_epoch, history, elapsed = _resume_or_seed(plan, prep.model, optimizer, info, say)
        if main:  # --report-to; a run started from scratch clears its old tracking output
            trackers = open_trackers(cfg, out, fresh=start_epoch == 0)
        # fresh: perturb each batch as it is drawn; fixed: train_x is already the perturbed set
        epochs = EpochLoop.build(plan, prep, info, optimizer, train_x,
                                 "none" if fixed_info is not None else cfg.train_perturbation,
                                 progress and main)
        extra = prep.method.extra_parameters(prep.model)
        if main and start_epoch == 0:
            say(_start_line(cfg, prep, len(prep.train.y), extra, info.world, device))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_reset = run_metrics.reset_peak_rss()
        elapsed = run_epochs(epochs, start_epoch, history, elapsed,
                             lambda bar: epoch_callbacks(plan, prep.model, optimizer, info,
                                                         say, bar, trackers, on_epoch))
        if not main:
            info.barrier()
            return {}
        metrics = run_metrics.final_metrics(
            cfg, prep.method, prep.model, prep.data, prep.val, prep.test, history, elapsed,
            device, prep.base_params, extra, info, command, rss_reset, fixed_info,
            prep.normalize)
        _finish(out, prep.model, metrics, trackers, say)
        info.barrier()
        return metrics
    finally:
        trackers.close()
        _close_logger(log)


def _resume_or_seed(plan: RunPlan, model: nn.Module, optimizer: torch.optim.Optimizer,
                    info: DistInfo, say: Callable[[str], None]
                    ) -> tuple[int, list[dict[str, Any]], float]:
    """Load the folder's checkpoint into ``model`` and ``optimizer`` and restore this rank's
    RNG state, or seed this rank's noise stream for a fresh start.

    Returns:
        (epochs done, the history so far, wall-clock seconds so far).
    Raises:
        UserError: a checkpoint that does not fit this run.
    """
    cfg, out = plan.cfg, plan.out
    resumed = checkpoint.load_checkpoint(out)
    if resumed is None:
        seed_everything(noise_seed(cfg.seed, info.rank))  # each rank its own noise
        return 0, [], 0.0
    weights, state = resumed
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"the checkpoint in {out / CHECKPOINT_DIR} does not fit this "
                        f"run ({str(err).splitlines()[0]}); pass --overwrite to start "
                        "again.") from None
    start_epoch, history = int(state["epoch"]), list(state["history"])
    rng = state["rng"]
    if len(rng) == info.world:
        set_rng_state(rng[info.rank])
    else:  # a different number of processes: continue, but not bit-identically
        seed_everything(noise_seed(cfg.seed + start_epoch, info.rank))
        say(f"resumed with {info.world} processes instead of {len(rng)}: RNG reseeded")
    say(f"resumed from the checkpoint after epoch {start_epoch}")
    return start_epoch, history, float(state["elapsed_s"])


def _start_line(cfg: RunConfig, prep: Prepared, num_train: int, extra: int, world: int,
                device: torch.device) -> str:
    """The log's first line: what trains, on what, for how long."""
    mode = (f" ({cfg.perturbation_mode})" if cfg.train_perturbation != "none" else "")
    return (f"start: {cfg.dataset} ({num_train} train / {len(prep.val)} val / "
            f"{len(prep.test)} test), {cfg.model} ({prep.base_params} parameters, +{extra} by "
            f"{cfg.method}), {cfg.epochs} epochs, batch {cfg.batch_size} on {world} "
            f"process(es), {device}, perturbation {cfg.train_perturbation}{mode}")


def _finish(out: Path, model: nn.Module, metrics: dict[str, Any], trackers: Any,
            say: Callable[[str], None]) -> None:
    """Phase 5 (rank 0): the weights, then metrics.json (last: it marks the run finished),
    then the replaced run is dropped and the trackers closed."""
    atomic_write_safetensors({k: v.detach().contiguous().cpu()
                              for k, v in model.state_dict().items()},
                             out / "model.safetensors")
    atomic_write_json(out / "metrics.json", metrics)
    drop_aside(out)  # the run this one replaced (--overwrite) may go now, not before
    trackers.finish(metrics)
    say(f"finished: test_accuracy {metrics['test_accuracy']:.4f} "
        f"({metrics['prediction']} prediction), wall clock {metrics['wall_clock_s']:.1f}s")
