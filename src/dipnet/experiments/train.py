"""`run_training`: one run, from a `RunConfig` to a folder of results, resumable and DDP-ready.

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
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DistributedSampler

from ..errors import UserError
from ..fileio import atomic_write_json
from .config import RunConfig
from .data import DatasetSplits, Split, list_datasets, load_dataset
from .methods import Method, get_method
from .models import count_parameters, create_model, list_models
from .perturb import perturb_batch

CHECKPOINT_DIR = "checkpoint"
RESULT_FILES = ("config.yaml", "metrics.json", "train.log", "model.safetensors", CHECKPOINT_DIR)


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


# ---------------------------------------------------------------------- RNG state
def noise_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s noise stream: distinct per (seed, rank) pair."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def get_rng_state() -> dict[str, Any]:
    """All RNG states as weights_only-loadable values (tensors, ints, floats, tuples)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    """
    root = out / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{state['epoch']:04d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
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


# ---------------------------------------------------------------------- the run
def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def read_metrics(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The metrics.json of a finished run in ``out_dir``, or None if it has not finished."""
    path = Path(out_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if metrics.get("status") == "finished" else None


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def _make_logger(out: Path, enabled: bool) -> logging.Logger:
    logger = logging.getLogger(f"dipnet.train.{out.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    if enabled:
        handler = logging.FileHandler(out / "train.log", mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())
    return logger


def _lr_factor(cfg: RunConfig, epoch: int) -> float:
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return 1.0


def run_training(cfg: RunConfig, out_dir: str | os.PathLike, overwrite: bool = False,
                 progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train one run and write its results folder; resume or reuse what is there.

    Args:
        cfg: the run's config.
        out_dir: the results folder (created).
        overwrite: discard a finished or partial run in ``out_dir`` and train again.
        progress: show tqdm bars (epochs and batches) on stderr.
        command: the command line recorded in metrics.json (default: sys.argv).
    Returns:
        The metrics dict (also written to ``out_dir/metrics.json``). A finished run with the
        same config is not retrained: its metrics are returned (and a line says so).
    Raises:
        UserError: bad config values, missing data, a folder holding a different run, a
            corrupt checkpoint.
    """
    out = Path(out_dir)
    info = DistInfo()
    device = resolve_device(cfg.device, info.local_rank)
    info.init(device)
    try:
        return _run(cfg, out, overwrite, progress, command, info, device)
    finally:
        info.close()


def _run(cfg: RunConfig, out: Path, overwrite: bool, progress: bool, command: str | None,
         info: DistInfo, device: torch.device) -> dict[str, Any]:
    main = info.is_main
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # Every name and parameter is checked before anything is written to the folder.
    method = get_method(cfg.method, **cfg.resolved_method_params())
    if cfg.dataset not in list_datasets():
        raise UserError(f"unknown data set {cfg.dataset!r}; choose one of "
                        f"{', '.join(list_datasets())}.")
    if ":" not in cfg.model and cfg.model not in list_models():
        raise UserError(f"unknown model {cfg.model!r}; choose one of "
                        f"{', '.join(list_models())} or give 'package.module:factory'.")

    # ---- what is already in the folder
    saved_cfg_path = out / "config.yaml"
    if overwrite:
        info.barrier()
        if main:
            for name in RESULT_FILES:
                p = out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        info.barrier()
    elif saved_cfg_path.is_file():
        saved = RunConfig.load(saved_cfg_path)
        diff = _config_diff(saved.result_dict(), cfg.result_dict())
        if diff:
            raise UserError(f"{out} holds a different run ({'; '.join(diff[:3])}); choose "
                            "another --out folder, or pass --overwrite to replace it.")
        finished = read_metrics(out)
        if finished is not None:
            if main:
                print(f"dipnet: run in {out} already finished (test accuracy "
                      f"{finished['test_accuracy']:.4f}); reusing it. Pass --overwrite to "
                      "train it again.", file=sys.stderr)
            return finished

    # ---- data, model, method (before writing anything: missing data is a clean error)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.split_seed,
                        cfg.max_train, cfg.max_val)
    train, val, test = data.train.to(device), data.val.to(device), data.test.to(device)
    num_train = len(train)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = create_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_params)
    base_params = count_parameters(model)
    model = method.prepare_model(model, cfg, num_train).to(device)
    # Data-dependent initial state (dipnet's init_scale: variances relative to each layer's
    # activation scale), from the first training examples, BEFORE a checkpoint is loaded.
    method.calibrate(model, train.x[:512])

    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(saved_cfg_path)
    info.barrier()
    log = _make_logger(out, main)
    say = (lambda msg: (log.info(msg))) if main else (lambda msg: None)
    optimizer = method.make_optimizer(model, cfg)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]

    start_epoch, history, elapsed = 0, [], 0.0
    resumed = load_checkpoint(out)
    if resumed is not None:
        weights, state = resumed
        try:
            model.load_state_dict(weights)
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise UserError(f"the checkpoint in {out / CHECKPOINT_DIR} does not fit this run "
                            f"({str(err).splitlines()[0]}); pass --overwrite to start "
                            "again.") from None
        start_epoch, history = int(state["epoch"]), list(state["history"])
        elapsed = float(state["elapsed_s"])
        rng = state["rng"]
        if len(rng) == info.world:
            set_rng_state(rng[info.rank])
        else:  # a different number of processes: continue, but not bit-identically
            seed_everything(noise_seed(cfg.seed + start_epoch, info.rank))
            say(f"resumed with {info.world} processes instead of {len(rng)}: RNG reseeded")
        say(f"resumed from the checkpoint after epoch {start_epoch}")
    else:
        seed_everything(noise_seed(cfg.seed, info.rank))  # each rank its own noise

    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    extra = method.extra_parameters(model)
    per_rank_batch = max(1, math.ceil(cfg.batch_size / info.world))
    sampler = DistributedSampler(range(num_train), num_replicas=info.world, rank=info.rank,
                                 shuffle=True, seed=cfg.seed)
    if main and start_epoch == 0:
        say(f"start: {cfg.dataset} ({num_train} train / {len(val)} val / {len(test)} test), "
            f"{cfg.model} ({base_params} parameters, +{extra} by {cfg.method}), "
            f"{cfg.epochs} epochs, batch {cfg.batch_size} on {info.world} process(es), "
            f"{device}, perturbation {cfg.train_perturbation}")

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss_reset = _reset_peak_rss()
    from tqdm.auto import tqdm

    show = progress and main
    epochs_bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"{cfg.run_name()}",
                      unit="epoch", disable=not show, file=sys.stderr, dynamic_ncols=True)
    for epoch in range(start_epoch, cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * _lr_factor(cfg, epoch)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long, device=device)
        batches = list(torch.split(order, per_rank_batch))
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches.pop()  # a batch of one breaks BatchNorm; its example comes back next epoch
        net.train()
        sums: dict[str, float] = {}
        seen = 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not show, file=sys.stderr, dynamic_ncols=True)
        for idx in bar:
            xb, yb = train.x[idx], train.y[idx]
            xb = perturb_batch(cfg.train_perturbation, xb, yb, cfg.strength, model,
                               method.predict_logits)
            parts = method.train_step(net, optimizer, xb, yb)
            n = len(idx)
            seen += n
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + (value if key == "correct" else value * n)
            if show:
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
        bar.close()
        if info.enabled:
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys] + [float(seen)], dtype=torch.float64,
                             device=device)
            dist.all_reduce(t)
            sums = dict(zip(keys, t[:-1].tolist()))
            seen = int(t[-1].item())
        train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": sums.get("loss", float("nan")) / max(seen, 1),
            "train_accuracy": sums.get("correct", 0.0) / max(seen, 1),
        }
        for key in sorted(sums):
            if key not in ("loss", "correct"):
                row[f"train_{key}"] = sums[key] / max(seen, 1)
        if main:
            if len(val):
                v = evaluate_split(method, model, val, cfg.eval_batch_size, cfg.mc_samples)
                row["val_loss"], row["val_accuracy"] = v["loss"], v["accuracy"]
            row.update(method.epoch_stats(model))
        row["train_time_s"] = train_time
        row["epoch_time_s"] = time.perf_counter() - t0
        # CPU seconds of this process (all its threads): on a shared machine a steadier cost
        # figure than wall clock, which counts the time other jobs held the cores.
        row["train_cpu_time_s"] = train_cpu
        elapsed += row["epoch_time_s"]
        history.append(row)

        # ---- checkpoint: every rank's RNG state, rank 0 writes
        rng = [get_rng_state()]
        if info.enabled:
            gathered: list[Any] = [None] * info.world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if main:
            save_checkpoint(out, model, {"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                                         "rng": rng, "history": history, "elapsed_s": elapsed,
                                         "world_size": info.world})
            say(f"epoch {epoch + 1}/{cfg.epochs} train_loss {row['train_loss']:.4f} "
                f"train_acc {row['train_accuracy']:.4f} val_loss {row.get('val_loss', 0):.4f} "
                f"val_acc {row.get('val_accuracy', 0):.4f} time {row['epoch_time_s']:.2f}s")
            epochs_bar.set_postfix(val_acc=f"{row.get('val_accuracy', float('nan')):.3f}")
        epochs_bar.update(1)
        info.barrier()
    epochs_bar.close()

    if not main:
        info.barrier()
        return {}
    metrics = _final_metrics(cfg, method, model, data, val, test, history, elapsed, device,
                             base_params, extra, info, command, rss_reset)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(out / ".model.safetensors.tmp"))
    os.replace(out / ".model.safetensors.tmp", out / "model.safetensors")
    atomic_write_json(out / "metrics.json", metrics)
    say(f"finished: test_accuracy {metrics['test_accuracy']:.4f} "
        f"({metrics['prediction']} prediction), wall clock {metrics['wall_clock_s']:.1f}s")
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    info.barrier()
    return metrics


def _final_metrics(cfg: RunConfig, method: Method, model: nn.Module, data: DatasetSplits,
                   val: Split, test: Split, history: list[dict[str, Any]], elapsed: float,
                   device: torch.device, base_params: int, extra: int, info: DistInfo,
                   command: str | None, rss_reset: bool) -> dict[str, Any]:
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
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        peak_kind = "torch.cuda.max_memory_allocated of this run"
    else:
        peak = _peak_rss_mb()
        peak_kind = ("peak resident set size (VmHWM) of the rank-0 process during this run "
                     "(data set and Python included)" if rss_reset else
                     "peak resident set size of the whole process (ru_maxrss)")
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
