"""What a run measures: loss and accuracy of a prediction on a split (`evaluate_split`, also
the per-epoch validation), peak memory, and the finished run's metrics.json (`final_metrics`)."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import DatasetSplits, Split
from dipnet.experiments.zoo.methods import Method

if TYPE_CHECKING:
    from dipnet.experiments.run.distributed import DistInfo

__all__ = ["evaluate_split", "final_metrics", "peak_memory", "reset_peak_rss", "hardware"]


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


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux); returns whether it could."""
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


def hardware(device: torch.device) -> str:
    """The device in words, for metrics.json."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def peak_memory(device: torch.device, rss_reset: bool) -> tuple[float, str]:
    """(peak memory of this run in MiB, what that figure measures)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) / 2**20,
                "torch.cuda.max_memory_allocated of this run")
    return _peak_rss_mb(), ("peak resident set size (VmHWM) of the rank-0 process during this "
                            "run (data set and Python included)" if rss_reset else
                            "peak resident set size of the whole process (ru_maxrss)")


def final_metrics(cfg: RunConfig, method: Method, model: nn.Module, data: DatasetSplits,
                   val: Split, test: Split, history: list[dict[str, Any]], elapsed: float,
                   device: torch.device, base_params: int, extra: int, info: DistInfo,
                   command: str | None, rss_reset: bool,
                   fixed_info: dict[str, Any] | None = None,
                   normalize: dict[str, list] | None = None) -> dict[str, Any]:
    """metrics.json of a finished run (rank 0): the test accuracy of its default prediction,
    deterministic and Monte Carlo, validation, history, cost, and everything needed to rebuild
    the model (`runs.load_run`; ``normalize`` is the input normalisation the model was built with,
`train.Prepared.normalize`). The test split is read here and nowhere earlier."""
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
    peak, peak_kind = peak_memory(device, rss_reset)
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
        "normalize": normalize,
        "num_val": len(val),
        "num_test": len(test),
        "world_size": info.world,
        "device": str(device),
        "hardware": hardware(device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "command": command if command is not None else " ".join(sys.argv),
        "config": cfg.to_dict(),
    }
