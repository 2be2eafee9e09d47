"""DIPNet ablation: which of our decisions on the paper's open points matter, measured.

Variants of the dipnet method against standard training, on the same Fashion-MNIST MLP set-up
as the committed sweep (docs/results/archive/fashion_mnist/: 10,000 training images, 5 epochs, MLP
784-256-256-10, Adam lr 1e-3 cosine, clean inputs), 3 seeds each:
  - default: DIPConfig() (every Linear input, ELBO-scaled barrier, init variance 0.01)
  - variance_lr=0.05: the variances get their own, faster learning rate
  - placement=input: the network input only (cf. randomized smoothing / input noise)
  - unscaled barrier (paper's literal form) with variance_lr=0.05 (so it can act)
  - m=4, gamma=0.05: the paper's from-scratch stability setting

With --preset resnet: a CIFAR-style ResNet-8 (BatchNorm, residual blocks) on the same 10,000
Fashion-MNIST images, 3 epochs, 3 seeds: standard vs DIPNet with placement layers (every conv /
linear input), blocks (each residual block's input) and input (the image only): the placement
decision, measured where it can matter.

Run:  .venv/bin/python scripts/ablation.py [--preset mlp|resnet] [--out DIR] [--docs DIR]
Finished runs are reused (run_training), so an interrupted ablation resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dipnet.experiments.run.config import RunConfig
from dipnet._util.fileio import atomic_write_text
from dipnet.experiments.report.stats import format_mean_std, format_p, paired_test, summarize
from dipnet.experiments.run.train import run_training

VARIANTS: dict[str, tuple[str, dict]] = {
    "standard": ("standard", {}),
    "dipnet (default)": ("dipnet", {}),
    "dipnet, variance_lr=0.05": ("dipnet", {"variance_lr": 0.05}),
    "dipnet, placement=input": ("dipnet", {"placement": "input"}),
    "dipnet, unscaled barrier, variance_lr=0.05": (
        "dipnet", {"barrier_scaling": "unscaled", "variance_lr": 0.05}),
    "dipnet, m=4, gamma=0.05": ("dipnet", {"m": 4, "gamma": 0.05}),
}


RESNET_VARIANTS: dict[str, tuple[str, dict]] = {
    "standard": ("standard", {}),
    "dipnet, placement=layers (default)": ("dipnet", {}),
    "dipnet, placement=blocks": ("dipnet", {"placement": "blocks"}),
    "dipnet, placement=input": ("dipnet", {"placement": "input"}),
}
PRESETS = {
    "mlp": dict(variants=VARIANTS, model="mlp", epochs=5, model_params={"hidden": [256, 256]},
                max_val=None, title="Fashion-MNIST MLP 784-256-256-10, 5 epochs"),
    # Validation capped at 2,000 images: on the CPU a full 6,000-image pass costs as much as
    # a third of a ResNet epoch, and validation selects nothing here.
    "resnet": dict(variants=RESNET_VARIANTS, model="resnet8", epochs=3, model_params={},
                   max_val=2000,
                   title="Fashion-MNIST ResNet-8, 3 epochs"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mlp",
                        help="mlp: design decisions on an MLP; resnet: placement on a ResNet-8")
    parser.add_argument("--out", default=None, help="run folders (default runs/ablation[_resnet])")
    parser.add_argument("--docs", default=None, help="where results.json and README.md go "
                        "(default docs/results/ablation[_resnet])")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    parser.add_argument("--dataset", default="fashion_mnist", help="data set (default %(default)s)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    suffix = "" if args.preset == "mlp" else f"_{args.preset}"
    args.out = args.out or f"runs/ablation{suffix}"
    args.docs = args.docs or f"docs/results/ablation{suffix}"
    rows = {}
    for label, (method, params) in preset["variants"].items():
        accs, variances, times = [], [], []
        for seed in range(args.seeds):
            cfg = RunConfig(dataset=args.dataset, model=preset["model"], method=method,
                            epochs=preset["epochs"], seed=seed, max_train=10000, max_val=preset["max_val"],
                            batch_size=128, lr=1e-3, model_params=dict(preset["model_params"]),
                            method_params=dict(params), num_threads=1, eval_mc=False)
            slug = "".join(c if c.isalnum() else "_" for c in label).strip("_")
            metrics = run_training(cfg, Path(args.out) / f"{slug}-s{seed}", progress=False)
            accs.append(metrics["test_accuracy"])
            times.append(metrics.get("cpu_time_per_epoch_s") or metrics["time_per_epoch_s"])
            if metrics.get("variances"):
                variances.append(metrics["variances"])
        rows[label] = {"method": method, "params": params, "test_accuracy": accs,
                       "cpu_time_per_epoch_s": times, "final_variance_mean": variances}
        print(f"{label:<45} {format_mean_std(summarize(accs), 100)}", flush=True)

    base = rows["standard"]["test_accuracy"]
    lines = [
        f"# DIPNet ablation ({preset['title']}, clean inputs)", "",
        "10,000 training images (as docs/results/archive/fashion_mnist), Adam lr 1e-3 cosine, "
        f"{args.seeds} seeds; test accuracy on the full 10,000-image test set, deterministic "
        f"prediction. Paired t-test against standard over seeds (n={args.seeds}: low power).", "",
        f"Command: `.venv/bin/python scripts/ablation.py --preset {args.preset} --seeds {args.seeds}`", "",
        "| variant | test accuracy % (mean ± std) | Δ vs standard | p | CPU s/epoch | mean variance per layer (seed 0) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, row in rows.items():
        accs = row["test_accuracy"]
        test = paired_test(accs, base) if label != "standard" else None
        delta = 100 * (sum(accs) - sum(base)) / len(accs)
        var = row["final_variance_mean"][0] if row["final_variance_mean"] else {}
        var_s = ", ".join(f"{k}: {v:.3g}" for k, v in var.items()) if var else "-"
        t = sum(row["cpu_time_per_epoch_s"]) / len(row["cpu_time_per_epoch_s"])
        lines.append(f"| {label} | {format_mean_std(summarize(accs), 100)} | "
                     f"{delta:+.2f} | {format_p(test.t_p) if test else '-'} | {t:.1f} | "
                     f"{var_s} |")
    docs = Path(args.docs)
    atomic_write_text(docs / "results.json", json.dumps(rows, indent=2))
    atomic_write_text(docs / "README.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
