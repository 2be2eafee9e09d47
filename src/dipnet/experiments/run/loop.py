"""The epoch loop of a run and its end-of-epoch callbacks, in the manner of the HF Trainer and
Lightning: `EpochLoop` trains one epoch and makes its history row, `run_epochs` runs them, and
`epoch_callbacks` are what happens after each (checkpoint, log line, progress bar, trackers,
the caller's ``on_epoch``). The lifecycle around it (plan, prepare, take the folder, finish) is
`dipnet.experiments.run.train`."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from dipnet.experiments.run import checkpoint as checkpoint_module
from dipnet.experiments.run import metrics
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.run.distributed import DistInfo
from dipnet.experiments.run.rng import get_rng_state
from dipnet.experiments.zoo.methods import compile_for_training
from dipnet.experiments.zoo.perturb import perturb_batch

if TYPE_CHECKING:  # the lifecycle's records; train imports this module, not the reverse
    from dipnet.experiments.run.train import Prepared, RunPlan

__all__ = ["EpochLoop", "EpochEnd", "EpochCallback", "run_epochs", "epoch_callbacks",
           "lr_factor"]


def lr_factor(cfg: RunConfig, epoch: int) -> float:
    """The learning-rate multiplier of epoch ``epoch`` (0-based) under ``cfg.lr_schedule``."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return 1.0


@dataclass
class EpochLoop:
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
              show: bool) -> "EpochLoop":
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
            group["lr"] = group["base_lr"] * lr_factor(cfg, epoch)
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
                v = metrics.evaluate_split(method, model, self.prep.val, self.cfg.eval_batch_size,
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
class EpochEnd:
    """What the end of an epoch hands to each callback (`epoch_callbacks`)."""

    row: dict[str, Any]
    history: list[dict[str, Any]]
    elapsed: float  # wall-clock seconds of every epoch so far
    rng: list[Any]  # every rank's RNG state


EpochCallback = Callable[[EpochEnd], None]


def run_epochs(loop: EpochLoop, start_epoch: int, history: list[dict[str, Any]],
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
        end = EpochEnd(row, history, elapsed, loop.gather_rng())
        for callback in at_end:
            callback(end)
        epochs_bar.update(1)
        loop.info.barrier()
    epochs_bar.close()
    return elapsed


def epoch_callbacks(plan: RunPlan, model: nn.Module, optimizer: torch.optim.Optimizer,
                     info: DistInfo, say: Callable[[str], None], epochs_bar: Any,
                     trackers: Any, on_epoch: Callable[[dict[str, Any]], None] | None
                     ) -> list[EpochCallback]:
    """The end-of-epoch callbacks, in order: the checkpoint, the log line, the progress
    bar, the trackers (``--report-to``) and the caller's ``on_epoch``. Rank 0 only: the
    other ranks have none (they hand their RNG state to rank 0 in `gather_rng`)."""
    if not info.is_main:
        return []
    cfg, out = plan.cfg, plan.out

    def checkpoint(end: EpochEnd) -> None:
        checkpoint_module.save_checkpoint(out, model, {"epoch": end.row["epoch"],
                                     "optimizer": optimizer.state_dict(), "rng": end.rng,
                                     "history": end.history, "elapsed_s": end.elapsed,
                                     "world_size": info.world})

    def log_line(end: EpochEnd) -> None:
        row = end.row
        say(f"epoch {row['epoch']}/{cfg.epochs} train_loss {row['train_loss']:.4f} "
            f"train_acc {row['train_accuracy']:.4f} val_loss "
            f"{row.get('val_loss', 0):.4f} val_acc {row.get('val_accuracy', 0):.4f} "
            f"time {row['epoch_time_s']:.2f}s")

    def progress(end: EpochEnd) -> None:
        epochs_bar.set_postfix(val_acc=f"{end.row.get('val_accuracy', float('nan')):.3f}")

    callbacks = [checkpoint, log_line, progress, lambda end: trackers.log_epoch(end.row)]
    if on_epoch is not None:
        callbacks.append(lambda end: on_epoch(dict(end.row)))
    return callbacks
