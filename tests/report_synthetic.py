"""Synthetic sweep folders for the report tests: config.yaml, metrics.json and evaluation.json
written by hand in the layouts `dipnet train` / `dipnet evaluate` produce, so the report tests
run in about a second and never train anything.

`write_sweep(root, accuracy=...)` writes ``root/runs/<run>/`` for every (method, seed,
condition); what goes into each file is chosen by keyword arguments so a test can ask for
exactly the case it checks (a round-off constant difference, the legacy variance layout, no
evaluation at all).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

DATASET, MODEL = "mnist", "mlp"
LAYERS = ("0", "2", "4")


def variance_row(epoch: int, layer_scale: dict[str, float], init: float = 0.01,
                 grow: float = 0.05) -> tuple[dict[str, Any], dict[str, Any]]:
    """One epoch's ``variance`` and ``variance_grad`` entries in the schema the dipnet method
    records: lambda of layer L grows by ``grow * layer_scale[L]`` per epoch from ``init``."""
    var: dict[str, Any] = {}
    grad: dict[str, Any] = {}
    for layer, s in layer_scale.items():
        mean = init * (1 + grow * s * epoch)
        var[layer] = {"mean": mean, "min": mean * 0.5, "max": mean * 2.0,
                      "q05": mean * 0.6, "q25": mean * 0.8, "q50": mean, "q75": mean * 1.2,
                      "q95": mean * 1.6, "init": init, "rel_change": abs(mean / init - 1)}
        grad[layer] = {"data": -1e-3 * s / (epoch + 1), "barrier": 2e-4 * s}
    return var, grad


def metrics_for(method: str, seed: int, pert: str, acc: float, epochs: int = 3,
                variance_layout: str | None = "new") -> dict[str, Any]:
    """A finished run's metrics.json. ``variance_layout``: "new" (per-epoch statistics, init and
    final histogram), "legacy" (``variance_mean`` per epoch only) or None (no variances)."""
    dip = method == "dipnet"
    history = []
    scale = {"0": 1.0, "2": 3.0, "4": 9.0}
    for e in range(1, epochs + 1):
        row: dict[str, Any] = {"epoch": e, "lr": 1e-3, "train_loss": 1.0 / e,
                               "train_accuracy": acc - 0.1 / e, "val_loss": 1.1 / e,
                               "val_accuracy": acc - 0.05 / e, "train_time_s": 1.0 + 0.1 * seed,
                               "epoch_time_s": 1.2, "train_cpu_time_s": 1.5}
        if dip:
            row.update(train_nll=0.9 / e, train_barrier=0.05, train_stability=0.0)
            if variance_layout == "new":
                row["variance"], row["variance_grad"] = variance_row(e, scale)
            if variance_layout in ("new", "legacy"):
                row["variance_mean"] = {k: 0.01 * (1 + 0.05 * s * e) for k, s in scale.items()}
        history.append(row)
    m: dict[str, Any] = {
        "status": "finished", "dataset": DATASET, "model": MODEL, "method": method,
        "seed": seed, "train_perturbation": pert, "epochs": epochs,
        "prediction": "sampled" if dip else "deterministic", "test_accuracy": acc,
        "test_accuracy_deterministic": acc, "val_accuracy": acc - 0.01, "history": history,
        "wall_clock_s": 5.0, "time_per_epoch_s": 1.2, "peak_memory_mb": 500.0,
        "num_params": 1000, "extra_params": 30 if dip else 0,
    }
    if dip and variance_layout:
        m["variances"] = dict(history[-1]["variance_mean"])
    if dip and variance_layout == "new":
        m["variance_init"] = {k: 0.01 for k in scale}
        m["variance_final_hist"] = {
            k: {"edges": [-2.5 + 0.25 * i for i in range(7)],
                "counts": [0, 2, 10, 5 * int(s), 3, 1]} for k, s in scale.items()}
    return m


def evaluation_for(method: str, seed: int, pert: str, acc: float,
                   reliability: bool = True, noise_sweep: bool = True) -> dict[str, Any]:
    """An evaluation.json in the layout of docs/evaluation.md (quick suite, trimmed)."""
    preds = ["deterministic", "sampled"] if method == "dipnet" else ["deterministic"]
    ev: dict[str, Any] = {
        "schema_version": 1, "suite": "quick", "dataset": DATASET, "model": MODEL,
        "method": method, "seed": seed, "train_perturbation": pert, "predictions": preds,
        "clean": {p: {"accuracy": acc, "nll": 0.3, "n_points": 1000, "k": 1} for p in preds},
        "calibration": {p: {"ece": 0.02 + 0.01 * seed, "brier": 0.1, "nll": 0.3,
                            "ece_bins": 15} for p in preds},
        "attacks": [{"attack": "pgd", "norm": "linf", "eps": e, "prediction": p,
                     "accuracy": acc * (1 - 4 * e), "n_points": 300, "steps": 20}
                    for p in preds for e in (0.0, 0.05, 0.1)],
        "corruptions": [], "ood": [
            {"in_dataset": DATASET, "out_dataset": o, "prediction": p, "score": s,
             "auroc": 0.9, "n_in": 100, "n_out": 100}
            for p in preds for o in ("fashion_mnist", "animal_mnist") for s in ("msp", "entropy")],
        "timing": {"clean": 1.0, "total": 2.0}, "n_points": {"attacks": 300},
        "settings": {"pgd_steps": 20}, "environment": {"torch": "x", "device": "cpu"},
    }
    if noise_sweep:
        for p in preds:
            for sev, sigma in ((1, 0.08), (2, 0.12), (3, 0.18)):
                ev["corruptions"].append({"corruption": "gaussian_noise", "severity": sev,
                                          "prediction": p, "accuracy": acc - sigma,
                                          "n_points": 200})
            ev["corruptions"].append({"corruption": "mean", "severity": None, "prediction": p,
                                      "accuracy": acc - 0.12, "n_points": 200})
    if reliability:
        for p in preds:
            conf = [0.1 * i + 0.05 for i in range(10)]
            ev["calibration"][p]["reliability"] = {
                "bin_edges": [0.1 * i for i in range(11)],
                "confidence": conf, "accuracy": [min(1.0, c + 0.03) for c in conf],
                "count": [0, 0, 1, 3, 5, 8, 13, 40, 90, 840]}
    return ev


def write_sweep(root: Path, accuracy: Callable[[str, int, str], float],
                methods: Sequence[str] = ("standard", "dipnet"), seeds: Sequence[int] = (0, 1, 2),
                perts: Sequence[str] = ("none",), evaluation: bool = False,
                variance_layout: str | None = "new", **eval_kw: Any) -> Path:
    """Write ``root/runs/*`` for every method x seed x condition; returns ``root``.

    ``accuracy(method, seed, pert)`` gives each run's test accuracy (a fraction)."""
    for pert in perts:
        for method in methods:
            for seed in seeds:
                acc = accuracy(method, seed, pert)
                name = f"{DATASET}-{MODEL}-{method}-{pert}-s{seed}"
                d = root / "runs" / name
                d.mkdir(parents=True, exist_ok=True)
                cfg = {"dataset": DATASET, "model": MODEL, "method": method, "seed": seed,
                       "train_perturbation": pert, "epochs": 3}
                (d / "config.yaml").write_text(yaml.safe_dump(cfg))
                (d / "metrics.json").write_text(json.dumps(
                    metrics_for(method, seed, pert, acc, variance_layout=variance_layout)))
                if evaluation:
                    (d / "evaluation.json").write_text(json.dumps(
                        evaluation_for(method, seed, pert, acc, **eval_kw)))
    return root


def finite(x: Any) -> bool:
    """True for a finite float."""
    return isinstance(x, (int, float)) and math.isfinite(x)
