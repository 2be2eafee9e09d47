"""Variance-learning design study: which update rule lets DIPNet's lambda find its balance?

Phase 1 of the variance study (docs/results/variance_study/). Every candidate trains the same
Fashion-MNIST MLP 784-512-512-10 (20,000 training images, 8 epochs, batch 128, Adam lr 1e-3 with
a cosine schedule, m = 1, ELBO-scaled barrier unless stated) from the same seeds, through the
core API only (`dipnet.project`, `DIPLoss`, `calibrate`, `variance_stats`). Every 25 steps it
records each layer's lambda statistics, and at the end:
  - converged: the per-layer mean log(lambda) moved less than 5% over the last epoch
    (|delta ln lambda| < 0.05), i.e. lambda stopped moving;
  - moved: mean |lambda / lambda_init - 1| per layer (how far from where it started);
  - layers differ: the ratio of the largest to the smallest layer-mean lambda / init;
  - features differ: the spread (std) of log10(lambda) over each layer's features;
  - validation accuracy (deterministic prediction; the test split is not touched here).

Run:  .venv/bin/python scripts/variance_design.py [--seeds 2] [--out runs/variance_design]
       [--only NAME ...] [--max-train 20000] [--epochs 8] [--summary FILE.json]
Each (candidate, seed) writes one JSON file; finished ones are reused, so it resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

import dipnet
from dipnet.experiments.zoo.data import load_dataset
from dipnet.experiments.zoo.models import create_model
from dipnet._util.fileio import atomic_write_json

# name -> (DIPConfig fields, variance learning rate or None for the weights' lr)
CANDIDATES: dict[str, tuple[dict[str, Any], float | None]] = {
    # today's default: softplus, absolute init 0.01, the weights' Adam lr
    "softplus, lr 1e-3 (old default)": ({}, None),
    "softplus, variance lr 1e-2": ({}, 1e-2),
    "log-variance, variance lr 1e-2": ({"parameterization": "exp"}, 1e-2),
    "log-variance, lr 1e-2, init 0.1 x act. var": (
        {"parameterization": "exp", "init_scale": 0.1}, 1e-2),
    "log-variance, lr 1e-2, init 0.1 x act. var, per-layer mean barrier": (
        {"parameterization": "exp", "init_scale": 0.1, "barrier_reduction": "mean"}, 1e-2),
    "log-variance, lr 3e-2, init 0.1 x act. var": (
        {"parameterization": "exp", "init_scale": 0.1}, 3e-2),
    "log-variance, lr 3e-2": ({"parameterization": "exp"}, 3e-2),
    "log-variance, lr 1e-1, init 0.1 x act. var": (
        {"parameterization": "exp", "init_scale": 0.1}, 1e-1),
    # the same rule from the old absolute start: does it end at the same balance?
    "log-variance, lr 1e-1": ({"parameterization": "exp"}, 1e-1),
}


def train_one(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    fields, vlr = CANDIDATES[name]
    data = load_dataset("fashion_mnist", None, 0.1, 0, args.max_train, 2000)
    train, val = data.train, data.val
    torch.manual_seed(seed)
    model = create_model("mlp", data.input_shape, data.num_classes, hidden=[512, 512])
    cfg = dipnet.DIPConfig(placement="layers", m=1, **fields)
    dipnet.project(model, cfg)
    if cfg.init_scale is not None:
        dipnet.calibrate(model, train.x[:512])
    loss_fn = dipnet.DIPLoss(cfg, num_train=len(train))
    opt = torch.optim.Adam(dipnet.parameter_groups(model, variance_lr=vlr), lr=1e-3)
    base = [g["lr"] for g in opt.param_groups]
    meter = dipnet.VarianceGradientMeter(cfg, len(train))
    steps_per_epoch = len(train) // 128
    total = steps_per_epoch * args.epochs
    trace: list[dict[str, Any]] = [{"step": 0, "stats": dipnet.variance_stats(model)}]
    gen = torch.Generator().manual_seed(seed)
    step = 0
    t0 = time.perf_counter()
    epoch_means: list[dict[str, float]] = [
        {k: math.log(v["mean"]) for k, v in trace[0]["stats"].items()}]
    grads: list[dict[str, Any]] = []
    for epoch in range(args.epochs):
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
        model.train()
        for idx in torch.randperm(len(train), generator=gen)[:steps_per_epoch * 128].split(128):
            parts = loss_fn(model, train.x[idx], train.y[idx])
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            meter.update(model)
            opt.step()
            step += 1
            if step % 25 == 0:
                trace.append({"step": step, "stats": dipnet.variance_stats(model)})
        grads.append(meter.summary())
        epoch_means.append({k: math.log(v["mean"])
                            for k, v in dipnet.variance_stats(model).items()})
    model.eval()
    with torch.no_grad():
        val_acc = float((dipnet.predict(model, val.x, k=0).labels == val.y).float().mean())
    final = dipnet.variance_stats(model)
    # The input layer's features are the pixels, the same in every seed: if the learned
    # per-pixel variances agree across seeds, the features learned something real.
    first = next(iter(dipnet.projections(model).values()))
    input_profile = [float(v) for v in first.variance.detach()]
    last_move = {k: abs(epoch_means[-1][k] - epoch_means[-2][k]) for k in final}
    ratios = [v["mean"] / v["init"] for v in final.values()]
    return {
        "candidate": name, "seed": seed, "config": cfg.to_dict(), "variance_lr": vlr,
        "steps": total, "seconds": time.perf_counter() - t0, "val_accuracy": val_acc,
        "final": final, "trace": trace, "grad_split": grads,
        "last_epoch_move_ln": last_move,
        "converged": all(v < 0.05 for v in last_move.values()),
        "moved": {k: v["rel_change"] for k, v in final.items()},
        "layer_ratio_spread": max(ratios) / min(ratios),
        "feature_log10_std": {k: v["log10_std"] for k, v in final.items()},
        "input_profile": input_profile,
    }


def summarize(rows: list[dict[str, Any]], path: Path) -> str:
    """A markdown table per candidate (means over seeds) and a JSON file beside it."""
    import numpy as np

    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(f"{r['candidate']} [{r['steps']} steps]", []).append(r)
    out, lines = {}, [
        "| candidate | val acc % | final lambda per layer (x init) | net grad / barrier grad, "
        "last epoch | last-epoch move of ln lambda | log10 spread over features | "
        "input-pixel profile: corr. across seeds |", "|---|---|---|---|---|---|---|"]
    for name, rs in by.items():
        layers = list(rs[0]["final"])
        lam = {k: float(np.mean([r["final"][k]["mean"] for r in rs])) for k in layers}
        ratio = {k: float(np.mean([r["final"][k]["mean"] / r["final"][k]["init"] for r in rs]))
                 for k in layers}
        bal = {k: float(np.mean([abs(r["grad_split"][-1][k]["data"]
                                     + r["grad_split"][-1][k]["barrier"])
                                 / abs(r["grad_split"][-1][k]["barrier"]) for r in rs]))
               for k in layers}
        move = {k: float(np.mean([r["last_epoch_move_ln"][k] for r in rs])) for k in layers}
        spread = {k: float(np.mean([r["feature_log10_std"][k] for r in rs])) for k in layers}
        corr = float("nan")
        if len(rs) >= 2 and all("input_profile" in r for r in rs):
            prof = np.log(np.array([r["input_profile"] for r in rs]))
            cs = [np.corrcoef(prof[i], prof[j])[0, 1] for i in range(len(rs))
                  for j in range(i + 1, len(rs))]
            corr = float(np.mean(cs))
        val = [r["val_accuracy"] for r in rs]
        out[name] = {"seeds": len(rs), "val_accuracy": val, "lambda": lam, "ratio_to_init": ratio,
                     "net_over_barrier_grad": bal, "last_epoch_move_ln": move,
                     "feature_log10_std": spread, "input_profile_corr": corr}
        fmt = lambda d, f: ", ".join(f"{k} {f(v)}" for k, v in d.items())  # noqa: E731
        lines.append(
            f"| {name} | {100 * np.mean(val):.2f} ± {100 * np.std(val, ddof=1) if len(val) > 1 else 0:.2f} | "
            f"{fmt(lam, lambda v: f'{v:.3g}')} ({fmt(ratio, lambda v: f'x{v:.3g}')}) | "
            f"{fmt(bal, lambda v: f'{v:.2f}')} | {fmt(move, lambda v: f'{v:.3f}')} | "
            f"{fmt(spread, lambda v: f'{v:.2f}')} | {corr:.2f} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default="runs/variance_design")
    ap.add_argument("--only", nargs="*", help="candidate names (default all)")
    ap.add_argument("--max-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summary", metavar="JSON", help="also write a summary of every finished "
                    "run in --out to this JSON file (and print the markdown table)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(CANDIDATES)
    rows = []
    for name in names:
        for seed in range(args.seeds):
            slug = "".join(c if c.isalnum() else "_" for c in name)[:60]
            path = out / f"{slug}-s{seed}-n{args.max_train}-e{args.epochs}.json"
            if path.is_file():
                res = json.loads(path.read_text())
            else:
                res = train_one(name, seed, args)
                atomic_write_json(path, res)
            rows.append(res)
            layers = ", ".join(f"{k} {v['init']:.2g}->{v['mean']:.3g}"
                               for k, v in res["final"].items())
            print(f"{name} s{seed}: val {res['val_accuracy']:.4f} converged "
                  f"{res['converged']} layer-spread {res['layer_ratio_spread']:.2f} | {layers} "
                  f"({res['seconds']:.0f}s)", flush=True)
    if args.summary:
        print(summarize(_all_finished(out), Path(args.summary)))
        plot(_all_finished(out), Path(args.summary).with_name("design_trajectories.png"))


PLOTTED = ("softplus, lr 1e-3 (old default)", "log-variance, variance lr 1e-2",
           "log-variance, lr 3e-2, init 0.1 x act. var", "log-variance, lr 1e-1",
           "log-variance, lr 1e-1, init 0.1 x act. var")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean lambda per layer over training steps, seed 0, 8 epochs, one line per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r["seed"] == 0 and r["candidate"] in PLOTTED
              and r["steps"] < 2000]
    layers = list(chosen[0]["final"])
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6), sharey=True)
    for r in sorted(chosen, key=lambda r: PLOTTED.index(r["candidate"])):
        for ax, layer in zip(axes, layers):
            steps = [t["step"] for t in r["trace"]]
            ax.plot(steps, [t["stats"][layer]["mean"] for t in r["trace"]], label=r["candidate"])
    for ax, layer in zip(axes, layers):
        ax.set_yscale("log")
        ax.set_title(f"layer input: {layer}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean variance lambda (log)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Fashion-MNIST MLP, 8 epochs: where each variance update rule takes lambda",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _all_finished(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


if __name__ == "__main__":
    main()
