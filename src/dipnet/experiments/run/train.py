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

import json
import logging
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DistributedSampler

from dipnet.errors import UserError, describe_os_error
from dipnet._util.fileio import atomic_torch_save, atomic_write_json, atomic_write_safetensors
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import DatasetSplits, Split, check_dataset_name, load_dataset
from dipnet.experiments.zoo.fixed import fixed_training_inputs, reference_config, reference_dir
from dipnet.experiments.run.locks import FolderLock
from dipnet.experiments.zoo.methods import Method, compile_for_training, get_method
from dipnet.experiments.zoo.models import count_parameters, create_model, list_models
from dipnet.experiments.zoo.perturb import perturb_batch
from dipnet.experiments.run.rng import get_rng_state, kept_rng, noise_seed, seed_everything, set_rng_state
from dipnet.experiments.run.rundir import (CHECKPOINT_DIR, RESULT_FILES, FolderState, check_out_path, drop_aside,
                     inspect_run_folder, read_metrics, restore_aside, set_aside)

__all__ = ["run_training", "train_run", "validate_run", "plan_run", "prepare_run", "RunPlan",
           "Prepared", "read_metrics", "evaluate_split", "save_checkpoint", "load_checkpoint",
           "RESULT_FILES", "CHECKPOINT_DIR"]


# ---------------------------------------------------------------------- distributed set-up
class DistInfo:
    """Rank / world size from torchrun's environment; initialises the process group."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        """Start the process group (gloo on CPU, nccl on CUDA) unless it is running."""
        if self.enabled and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)  # object collectives use the current device
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> cuda (this rank's GPU) if available else cpu; otherwise ``name``.

    Raises:
        UserError: a CUDA device without CUDA, or a malformed name.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a torch device; use auto, cpu, cuda or "
                        "cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available; use "
                            "--device cpu.")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


# ---------------------------------------------------------------------- memory
def _reset_peak_rss() -> bool:
    # Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) of this process, so the peak
    # belongs to this run even when several runs share one process (a sweep).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_split(method: Method, model: nn.Module, split: Split, batch_size: int = 1000,
                   k: int = 16, mode: str | None = None) -> dict[str, float]:
    """Loss (NLL of the predictive probabilities) and accuracy of a prediction on a split.

    Args:
        method: the run's method (decides how to predict).
        model: the trained model (put in eval mode, restored afterwards).
        split: the data, on the model's device.
        batch_size: examples per pass.
        k: Monte Carlo trajectories for a sampled prediction.
        mode: ``"deterministic"``, ``"sampled"`` or None for the method's default.
    Returns:
        ``{"loss": ..., "accuracy": ...}`` (NaN for an empty split).
    """
    n = len(split)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    was_training = model.training
    model.eval()
    nll, correct = 0.0, 0
    try:
        for i in range(0, n, batch_size):
            xb, yb = split.x[i:i + batch_size], split.y[i:i + batch_size]
            probs = method.predictive_probs(model, xb, k=k, mode=mode)
            nll += float(-torch.log(probs.gather(1, yb[:, None]).clamp_min(1e-12)).sum())
            correct += int((probs.argmax(-1) == yb).sum())
    finally:
        model.train(was_training)
    return {"loss": nll / n, "accuracy": correct / n}


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(out: Path, model: nn.Module, state: dict[str, Any]) -> Path:
    """Write checkpoint/epoch-NNNN/{model.safetensors,state.pt}, then switch latest.json.

    The pointer is replaced atomically after both files are complete, so a kill at any moment
    leaves either the previous or the new checkpoint, never a mix. Older epochs are removed.

    Raises:
        OSError: a file cannot be written (ENOSPC on a full disk); the new epoch's folder is
            removed and the previous checkpoint stays.
    """
    root = out / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{state['epoch']:04d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        # fileio's writers turn a full disk into one OSError naming the file
        atomic_write_safetensors({k: v.detach().contiguous().cpu()
                                  for k, v in model.state_dict().items()},
                                 tmp / "model.safetensors")
        atomic_torch_save(state, tmp / "state.pt")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half checkpoint holding space
        if isinstance(err, OSError) and err.errno is not None:  # name the checkpoint, not a temp
            raise type(err)(err.errno, err.strerror, str(root / name)) from None
        raise
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(root / "latest.json", {"epoch": state["epoch"], "dir": name})
    for old in root.iterdir():
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The last checkpoint's (weights, state), or None if there is none.

    Raises:
        UserError: if the checkpoint is unreadable (names the file and the fix).
    """
    pointer = out / CHECKPOINT_DIR / "latest.json"
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text())
        ckpt = out / CHECKPOINT_DIR / info["dir"]
        weights = load_file(str(ckpt / "model.safetensors"))
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # any failure here means a corrupt checkpoint
        raise UserError(f"the checkpoint in {out / CHECKPOINT_DIR} is corrupt or incomplete "
                        f"({type(err).__name__}: {err}); delete that folder to restart the "
                        "run from scratch, or pass --overwrite.") from None
    return weights, state


# ---------------------------------------------------------------------- helpers
def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


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


def _lr_factor(cfg: RunConfig, epoch: int) -> float:
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return 1.0


def _broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if not info.enabled or not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
    return Prepared(method, model, data, train, val, test, base_params)


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
    decision = _broadcast(info, decision)
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
    """Phases 4-5: resume or seed, run the epochs (`_run_epochs`, with the end-of-epoch
    callbacks of `_epoch_callbacks`), then write the results (`_finish`)."""
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
        loop = _EpochLoop.build(plan, prep, info, optimizer, train_x,
                                "none" if fixed_info is not None else cfg.train_perturbation,
                                progress and main)
        extra = prep.method.extra_parameters(prep.model)
        if main and start_epoch == 0:
            say(_start_line(cfg, prep, len(prep.train.y), extra, info.world, device))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_reset = _reset_peak_rss()
        elapsed = _run_epochs(loop, start_epoch, history, elapsed,
                              lambda bar: _epoch_callbacks(plan, prep.model, optimizer, info,
                                                           say, bar, trackers, on_epoch))
        if not main:
            info.barrier()
            return {}
        metrics = _final_metrics(cfg, prep.method, prep.model, prep.data, prep.val, prep.test,
                                 history, elapsed, device, prep.base_params, extra, info,
                                 command, rss_reset, fixed_info)
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
    resumed = load_checkpoint(out)
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


@dataclass
class _EpochLoop:
    """What every epoch reads, and `train_epoch` / `epoch_row`, which run one."""

    cfg: RunConfig
    prep: Prepared
    info: DistInfo
    device: torch.device
    optimizer: torch.optim.Optimizer
    net: nn.Module  # what the batches run through (DDP-wrapped, compiled); prep.model is saved
    train_x: torch.Tensor
    per_batch: str  # the perturbation drawn per batch ("none" when the set is fixed)
    sampler: DistributedSampler
    per_rank_batch: int
    show: bool  # progress bars

    @classmethod
    def build(cls, plan: RunPlan, prep: Prepared, info: DistInfo,
              optimizer: torch.optim.Optimizer, train_x: torch.Tensor, per_batch: str,
              show: bool) -> "_EpochLoop":
        cfg, device, model = plan.cfg, plan.device, prep.model
        net: nn.Module = model
        if info.enabled:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        # `compile: true`: the loop calls the compiled module; the optimizer and checkpoints
        # keep the plain model, which shares its parameters.
        net = compile_for_training(net, cfg)
        sampler = DistributedSampler(range(len(prep.train.y)), num_replicas=info.world,
                                     rank=info.rank, shuffle=True, seed=cfg.seed)
        return cls(cfg, prep, info, device, optimizer, net, train_x, per_batch, sampler,
                   max(1, math.ceil(cfg.batch_size / info.world)), show)

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], int]:
        """One pass over this rank's batches of epoch ``epoch`` (0-based).

        Returns:
            (the summed step outputs, examples seen), summed over every rank.
        """
        from tqdm.auto import tqdm

        cfg, method, train_y = self.cfg, self.prep.method, self.prep.train.y
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * _lr_factor(cfg, epoch)
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.device)
        batches = list(torch.split(order, self.per_rank_batch))
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches.pop()  # a batch of one breaks BatchNorm; its example comes back next epoch
        self.net.train()
        sums: dict[str, float] = {}
        seen = 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   leave=False, disable=not self.show, file=sys.stderr, dynamic_ncols=True)
        for idx in bar:
            xb, yb = self.train_x[idx], train_y[idx]
            xb = perturb_batch(self.per_batch, xb, yb, cfg.strength, self.prep.model,
                               method.predict_logits)
            parts = method.train_step(self.net, self.optimizer, xb, yb)
            n = len(idx)
            seen += n
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + (value if key == "correct" else value * n)
            if self.show:
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
        bar.close()
        if self.info.enabled:
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys] + [float(seen)], dtype=torch.float64,
                             device=self.device)
            dist.all_reduce(t)
            sums = dict(zip(keys, t[:-1].tolist()))
            seen = int(t[-1].item())
        return sums, seen

    def epoch_row(self, epoch: int, sums: dict[str, float], seen: int) -> dict[str, Any]:
        """The history row of epoch ``epoch``: training means, and (rank 0) validation and
        the method's own statistics. The caller adds the times."""
        method, model = self.prep.method, self.prep.model
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": sums.get("loss", float("nan")) / max(seen, 1),
            "train_accuracy": sums.get("correct", 0.0) / max(seen, 1),
        }
        for key in sorted(sums):
            if key not in ("loss", "correct"):
                row[f"train_{key}"] = sums[key] / max(seen, 1)
        if self.info.is_main:
            if len(self.prep.val):
                v = evaluate_split(method, model, self.prep.val, self.cfg.eval_batch_size,
                                   self.cfg.mc_samples)
                row["val_loss"], row["val_accuracy"] = v["loss"], v["accuracy"]
            row.update(method.epoch_stats(model))
        return row

    def gather_rng(self) -> list[Any]:
        """Every rank's RNG state, in rank order (what a checkpoint stores)."""
        rng = [get_rng_state()]
        if self.info.enabled:
            gathered: list[Any] = [None] * self.info.world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        return rng


@dataclass
class _EpochEnd:
    """What the end of an epoch hands to each callback (`_epoch_callbacks`)."""

    row: dict[str, Any]
    history: list[dict[str, Any]]
    elapsed: float  # wall-clock seconds of every epoch so far
    rng: list[Any]  # every rank's RNG state


EpochCallback = Callable[[_EpochEnd], None]


def _run_epochs(loop: _EpochLoop, start_epoch: int, history: list[dict[str, Any]],
                elapsed: float, callbacks: Callable[[Any], list[EpochCallback]]) -> float:
    """Train epochs ``start_epoch`` .. ``cfg.epochs - 1``, appending a row each to
    ``history`` and calling the end-of-epoch ``callbacks(epochs_bar)`` after each.

    Returns:
        the wall-clock seconds of every epoch, the resumed ones included.
    """
    from tqdm.auto import tqdm

    cfg = loop.cfg
    epochs_bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"{cfg.run_name()}",
                      unit="epoch", disable=not loop.show, file=sys.stderr, dynamic_ncols=True)
    at_end = callbacks(epochs_bar)
    for epoch in range(start_epoch, cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        sums, seen = loop.train_epoch(epoch)
        train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        row = loop.epoch_row(epoch, sums, seen)
        row["train_time_s"] = train_time
        row["epoch_time_s"] = time.perf_counter() - t0
        # CPU seconds of this process (all its threads): on a shared machine a steadier cost
        # figure than wall clock, which counts the time other jobs held the cores.
        row["train_cpu_time_s"] = train_cpu
        elapsed += row["epoch_time_s"]
        history.append(row)
        end = _EpochEnd(row, history, elapsed, loop.gather_rng())
        for callback in at_end:
            callback(end)
        epochs_bar.update(1)
        loop.info.barrier()
    epochs_bar.close()
    return elapsed


def _epoch_callbacks(plan: RunPlan, model: nn.Module, optimizer: torch.optim.Optimizer,
                     info: DistInfo, say: Callable[[str], None], epochs_bar: Any,
                     trackers: Any, on_epoch: Callable[[dict[str, Any]], None] | None
                     ) -> list[EpochCallback]:
    """The end-of-epoch callbacks, in order: the checkpoint, the log line, the progress
    bar, the trackers (``--report-to``) and the caller's ``on_epoch``. Rank 0 only: the
    other ranks have none (they hand their RNG state to rank 0 in `gather_rng`)."""
    if not info.is_main:
        return []
    cfg, out = plan.cfg, plan.out

    def checkpoint(end: _EpochEnd) -> None:
        save_checkpoint(out, model, {"epoch": end.row["epoch"],
                                     "optimizer": optimizer.state_dict(), "rng": end.rng,
                                     "history": end.history, "elapsed_s": end.elapsed,
                                     "world_size": info.world})

    def log_line(end: _EpochEnd) -> None:
        row = end.row
        say(f"epoch {row['epoch']}/{cfg.epochs} train_loss {row['train_loss']:.4f} "
            f"train_acc {row['train_accuracy']:.4f} val_loss "
            f"{row.get('val_loss', 0):.4f} val_acc {row.get('val_accuracy', 0):.4f} "
            f"time {row['epoch_time_s']:.2f}s")

    def progress(end: _EpochEnd) -> None:
        epochs_bar.set_postfix(val_acc=f"{end.row.get('val_accuracy', float('nan')):.3f}")

    callbacks = [checkpoint, log_line, progress, lambda end: trackers.log_epoch(end.row)]
    if on_epoch is not None:
        callbacks.append(lambda end: on_epoch(dict(end.row)))
    return callbacks


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


def _normalization(cfg: RunConfig, data: DatasetSplits) -> dict[str, list] | None:
    from dipnet.experiments.zoo.normalize import resolve_normalization

    return resolve_normalization(cfg.normalize, data.normalize, data.input_shape)


def _peak_memory(device: torch.device, rss_reset: bool) -> tuple[float, str]:
    """(peak memory of this run in MiB, what that figure measures)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) / 2**20,
                "torch.cuda.max_memory_allocated of this run")
    return _peak_rss_mb(), ("peak resident set size (VmHWM) of the rank-0 process during this "
                            "run (data set and Python included)" if rss_reset else
                            "peak resident set size of the whole process (ru_maxrss)")


def _final_metrics(cfg: RunConfig, method: Method, model: nn.Module, data: DatasetSplits,
                   val: Split, test: Split, history: list[dict[str, Any]], elapsed: float,
                   device: torch.device, base_params: int, extra: int, info: DistInfo,
                   command: str | None, rss_reset: bool,
                   fixed_info: dict[str, Any] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    k = cfg.mc_samples
    test_det = evaluate_split(method, model, test, cfg.eval_batch_size, k, "deterministic")
    want_mc = method.has_sampling and (cfg.eval_mc or method.default_prediction == "sampled")
    test_mc = (evaluate_split(method, model, test, cfg.eval_batch_size, k, "sampled")
               if want_mc else None)
    test_default = test_mc if (method.default_prediction == "sampled" and test_mc) else test_det
    val_accs = [r["val_accuracy"] for r in history if "val_accuracy" in r]
    finite = [a for a in val_accs if a == a]  # NaN-free
    best = int(np.argmax(finite)) if finite else None
    eval_time = time.perf_counter() - t0
    peak, peak_kind = _peak_memory(device, rss_reset)
    variances = method.epoch_stats(model).get("variance_mean")
    train_epochs = [r["epoch_time_s"] for r in history]
    return {
        "status": "finished",
        "run_name": cfg.run_name(),
        "dataset": cfg.dataset,
        "model": cfg.model,
        "method": cfg.method,
        "seed": cfg.seed,
        "train_perturbation": cfg.train_perturbation,
        "perturbation_strength": cfg.strength if cfg.train_perturbation != "none" else 0.0,
        "perturbation_mode": cfg.perturbation_mode if cfg.train_perturbation != "none"
        else "fresh",
        "fixed_perturbation": fixed_info,
        "epochs": cfg.epochs,
        "prediction": method.default_prediction,
        "mc_samples": k,
        "test_accuracy": test_default["accuracy"],
        "test_loss": test_default["loss"],
        "test_accuracy_deterministic": test_det["accuracy"],
        "test_accuracy_mc": None if test_mc is None else test_mc["accuracy"],
        "val_accuracy": val_accs[-1] if val_accs else None,
        "val_accuracy_best": finite[best] if best is not None else None,
        "val_accuracy_best_epoch": best + 1 if best is not None else None,
        "model_selection": "final epoch (no early stopping; the test split selects nothing)",
        "history": history,
        "wall_clock_s": elapsed + eval_time,
        "train_wall_clock_s": elapsed,
        "time_per_epoch_s": float(np.mean(train_epochs)) if train_epochs else 0.0,
        "train_time_per_epoch_s": float(np.mean([r["train_time_s"] for r in history]))
        if history else 0.0,
        "cpu_time_per_epoch_s": float(np.mean([r["train_cpu_time_s"] for r in history]))
        if history else 0.0,
        "num_threads": torch.get_num_threads(),
        "eval_time_s": eval_time,
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_kind,
        "num_params": base_params,
        "extra_params": extra,
        "variances": variances,
        **method.final_stats(model),
        "method_params": method.params,
        "num_train": len(data.train),
        # what load_run(load_data=False) needs to rebuild the model without the data set
        "input_shape": list(data.input_shape),
        "num_classes": int(data.num_classes),
        # the input normalisation the model was built with (load_run rebuilds it from here)
        "normalize": _normalization(cfg, data),
        "num_val": len(val),
        "num_test": len(test),
        "world_size": info.world,
        "device": str(device),
        "hardware": _hardware(device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "command": command if command is not None else " ".join(sys.argv),
        "config": cfg.to_dict(),
    }
