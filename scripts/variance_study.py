"""Variance study, phase 2: does LEARNING the variances beat the best FIXED noise?

Every arm gets the same tuning budget: three settings of its own noise knob, chosen by the mean
VALIDATION accuracy over the tuning seeds (0 and 1); the chosen setting then runs on every seed
and only then is the test split read. Arms:
  standard      plain training (nothing to tune)
  dipnet        the learned variances, recipe chosen in phase 1 (scripts/variance_design.py):
                log-variance with its own Adam learning rate, initial variance relative to
                each layer's activation scale; knob: init_scale in {0.03, 0.1, 0.3}
  fixed_noise   the same projections, variances frozen at their initial value; knob: the same
                init_scale grid (the control that isolates learning)
  fixed_profile the same projections frozen at the per-layer values the chosen dipnet run of the
                same seed ENDED with (is it the final level, or the path, that matters?)
  input_noise   Gaussian noise on the input in training; knob: sigma in {0.05, 0.1, 0.2}
  rs            randomized smoothing (noisy training, Monte Carlo prediction); knob: sigma in
                {0.05, 0.1, 0.25}
  dipnet_old    the old default (softplus, absolute initial variance 0.01, the weights' lr) for
                reference: what "dipnet" meant before this study
Conditions (the paper's Table 1 training inputs): none, gaussian (sigma 0.2) and fgsm (epsilon
0.2), the perturbed ones in both readings where the harness has them: ``fixed`` (the training set
perturbed once; FGSM against a reference model trained on clean data) and ``fresh`` (drawn anew
for every batch).

Set-up (scaled for a 2-core CPU; see docs/results/variance_study/README.md): Fashion-MNIST, MLP
784-512-512-10, 20,000 training images (2,000 held out for validation), 8 epochs, batch 128,
Adam lr 1e-3 cosine, m = 1.

Run:     .venv/bin/python scripts/variance_study.py run [--conditions none,gaussian-fixed]
                 [--seeds 5] [--jobs 2] [--out runs/variance_study]
Report:  .venv/bin/python scripts/variance_study.py report [--out runs/variance_study]
                 [--docs docs/results/variance_study]
Finished runs are reused (each run folder is a normal `dipnet train` folder), so it resumes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.run.rundir import read_metrics
from dipnet.experiments.report.stats import paired_test
from dipnet.experiments.run.train import run_training
from dipnet._util.fileio import atomic_write_json, atomic_write_text

PRESETS: dict[str, dict[str, Any]] = {
    # Training from scratch (the headline set-up).
    "mlp": dict(dataset="fashion_mnist", model="mlp", model_params={"hidden": [512, 512]},
                max_train=20000, epochs=8, batch_size=128, lr=1e-3, lr_schedule="cosine",
                mc_samples=8, eval_mc=False, num_threads=1, device="cpu"),
    # Fine-tuning a pretrained model, the paper's main setting, in small: ccexam's MNIST CNN
    # (99% on MNIST) with a new head, fine-tuned on Fashion-MNIST. 10,000 images and 3 epochs
    # because a conv epoch costs about 4x an MLP epoch on this CPU.
    "finetune": dict(dataset="fashion_mnist", model="ccexam_cnn", model_params={},
                     max_train=10000, epochs=3, batch_size=128, lr=1e-3,
                     lr_schedule="cosine", mc_samples=8, eval_mc=False, num_threads=1,
                     device="cpu"),
}
BASE = dict(PRESETS["mlp"])
RECIPE = {"parameterization": "exp", "variance_lr": 0.1}
INIT_SCALES = (0.03, 0.1, 0.3)
# arm -> list of (label, method, method_params)
ARMS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "standard": [("-", "standard", {})],
    "dipnet": [(f"init_scale={s}", "dipnet", {**RECIPE, "init_scale": s}) for s in INIT_SCALES],
    "fixed_noise": [(f"init_scale={s}", "fixed_noise", {"init_scale": s})
                    for s in INIT_SCALES],
    "input_noise": [(f"sigma={s}", "input_noise", {"sigma": s}) for s in (0.05, 0.1, 0.2)],
    "rs": [(f"sigma={s}", "rs", {"sigma": s}) for s in (0.05, 0.1, 0.25)],
    "dipnet_old": [("softplus, 0.01, shared lr", "dipnet",
                    {"parameterization": "softplus", "init_variance": 0.01, "variance_lr": None})],
}
TUNE_SEEDS: tuple[int, ...] = (0, 1)
CONDITIONS = {
    "none": ("none", "fresh"),
    "gaussian-fixed": ("gaussian", "fixed"),
    "gaussian-fresh": ("gaussian", "fresh"),
    "fgsm-fixed": ("fgsm", "fixed"),
    "fgsm-fresh": ("fgsm", "fresh"),
}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".=" else "_" for c in text)


def run_dir(out: Path, condition: str, arm: str, label: str, seed: int) -> Path:
    return out / condition / arm / _slug(label) / f"s{seed}"


def make_config(condition: str, method: str, params: dict[str, Any], seed: int,
                out: Path) -> RunConfig:
    perturbation, mode = CONDITIONS[condition]
    data = {**BASE, "method": method, "method_params": dict(params), "seed": seed,
            "train_perturbation": perturbation}
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    if "perturbation_mode" in fields and perturbation != "none":
        data["perturbation_mode"] = mode
        # One clean reference model per seed for fixed FGSM, shared by every arm.
        data["reference_cache"] = str(out / "_reference")
    elif mode == "fixed" and perturbation != "none":
        raise SystemExit("this dipnet has no perturbation_mode setting: cannot run "
                         f"condition {condition!r}")
    return RunConfig.from_dict(data)


def _train(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    cfg_dict, path = job
    cfg = RunConfig.from_dict(cfg_dict)
    try:
        metrics = run_training(cfg, path, progress=False,
                               command=f"scripts/variance_study.py run ({path})")
    except Exception as err:  # one failed run must not stop the others; a re-run retries it
        return {"path": path, "error": f"{type(err).__name__}: {err}"}
    return {"path": path, "val": metrics.get("val_accuracy")}


def _finished(path: Path) -> dict[str, Any] | None:
    return read_metrics(path)  # None unless the folder holds a finished run


def _run_all(jobs: list[tuple[dict[str, Any], str]], workers: int) -> None:
    todo = [j for j in jobs if _finished(Path(j[1])) is None]
    print(f"{len(jobs) - len(todo)} finished, {len(todo)} to train", flush=True)
    if not todo:
        return
    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        for i, res in enumerate(pool.map(_train, todo), 1):
            if "error" in res:
                print(f"[{i}/{len(todo)}] {res['path']}: FAILED {res['error']}", flush=True)
            else:
                print(f"[{i}/{len(todo)}] {res['path']}: val {res['val']:.4f}", flush=True)


def _mean_val(paths: list[Path]) -> float:
    vals = [_finished(p)["val_accuracy"] for p in paths]  # type: ignore[index]
    return sum(vals) / len(vals)


def select(out: Path, condition: str, arm: str) -> tuple[str, str, dict[str, Any]]:
    """The arm's setting with the best mean validation accuracy over the tuning seeds."""
    options = ARMS[arm]
    if len(options) == 1:
        return options[0]
    scored = [(_mean_val([run_dir(out, condition, arm, lab, s) for s in TUNE_SEEDS]), i)
              for i, (lab, _, _) in enumerate(options)]
    return options[max(scored)[1]]


def run_condition(out: Path, condition: str, seeds: int, workers: int) -> None:
    tune = []
    for arm, options in ARMS.items():
        for label, method, params in options:
            for s in (TUNE_SEEDS if len(options) > 1 else range(seeds)):
                cfg = make_config(condition, method, params, s, out)
                tune.append((cfg.to_dict(), str(run_dir(out, condition, arm, label, s))))
    print(f"== {condition}: tuning (seeds {TUNE_SEEDS}) and single-setting arms", flush=True)
    _run_all(tune, workers)
    final = []
    for arm, options in ARMS.items():
        if len(options) == 1:
            continue
        label, method, params = select(out, condition, arm)
        for s in range(seeds):
            cfg = make_config(condition, method, params, s, out)
            final.append((cfg.to_dict(), str(run_dir(out, condition, arm, label, s))))
    print(f"== {condition}: selected settings on every seed", flush=True)
    _run_all(final, workers)
    # fixed_profile: frozen at the per-layer means the selected dipnet run of each seed ended at
    label, _, params = select(out, condition, "dipnet")
    prof = []
    for s in range(seeds):
        learned = _finished(run_dir(out, condition, "dipnet", label, s))
        assert learned is not None
        profile = learned["variances"]
        cfg = make_config(condition, "fixed_noise", {"profile": profile}, s, out)
        prof.append((cfg.to_dict(), str(run_dir(out, condition, "fixed_profile",
                                                f"profile of dipnet {label}", s))))
    print(f"== {condition}: fixed at the learned profile", flush=True)
    _run_all(prof, workers)


# ---------------------------------------------------------------------- report
def collect(out: Path, condition: str, seeds: int) -> dict[str, Any]:
    # A condition run with fewer seeds (3 instead of 5) is reported with those it has.
    have = 0
    while have < seeds and _finished(run_dir(out, condition, "standard", "-", have)):
        have += 1
    seeds = have
    arms: dict[str, Any] = {}
    for arm in list(ARMS) + ["fixed_profile"]:
        if arm == "fixed_profile":
            dlabel = select(out, condition, "dipnet")[0]
            label = f"profile of dipnet {dlabel}"
            tuned = None
        else:
            label = select(out, condition, arm)[0]
            tuned = {lab: _mean_val([run_dir(out, condition, arm, lab, s) for s in TUNE_SEEDS])
                     for lab, _, _ in ARMS[arm]} if len(ARMS[arm]) > 1 else None
        runs = [_finished(run_dir(out, condition, arm, label, s)) for s in range(seeds)]
        if any(r is None for r in runs):
            continue
        arms[arm] = {
            "setting": label, "validation_of_each_setting": tuned, "seeds": seeds,
            "test_accuracy": [r["test_accuracy"] for r in runs],  # type: ignore[index]
            "val_accuracy": [r["val_accuracy"] for r in runs],  # type: ignore[index]
            "train_time_per_epoch_s": [r["train_time_per_epoch_s"] for r in runs],  # type: ignore[index]
            "variance_final": [r.get("variances") for r in runs],  # type: ignore[union-attr]
            "variance_init": [r.get("variance_init") for r in runs],  # type: ignore[union-attr]
        }
    return arms


def _ms(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return f"{100 * m:.2f} ± {100 * sd:.2f}"


def report(out: Path, docs: Path, seeds: int, conditions: list[str],
           preset: str = "mlp") -> None:
    results: dict[str, Any] = {"setup": {**BASE, "recipe": RECIPE, "seeds": seeds,
                                         "tuning_seeds": list(TUNE_SEEDS),
                                         "selection": "best mean validation accuracy"},
                               "conditions": {}}
    lines = ["| condition | arm | chosen on validation | test accuracy % (mean ± sd) | "
             "vs standard: diff [95% CI], p | vs dipnet |", "|---|---|---|---|---|---|"]
    for cond in conditions:
        arms = collect(out, cond, seeds)
        results["conditions"][cond] = arms
        if "standard" not in arms:
            continue
        for arm, a in arms.items():
            vs = {}
            for ref in ("standard", "dipnet"):
                if ref in arms and ref != arm:
                    vs[ref] = paired_test(a["test_accuracy"],
                                          arms[ref]["test_accuracy"]).to_dict()
            a["paired"] = vs
            cells = []
            for ref in ("standard", "dipnet"):
                t = vs.get(ref)
                if t is None:
                    cells.append("-")
                    continue
                p = t["t_p"]
                ptxt = ("n/a" if p != p else f"{p:.3f}") + ("*" if t["significant"] else "")
                cells.append(f"{100 * t['mean_diff']:+.2f} [{100 * t['ci_low']:+.2f}, "
                             f"{100 * t['ci_high']:+.2f}], p={ptxt}")
            lines.append(f"| {cond} | {arm} | {a['setting']} | {_ms(a['test_accuracy'])} | "
                         f"{cells[0]} | {cells[1]} |")
    docs.mkdir(parents=True, exist_ok=True)
    suffix = "" if preset == "mlp" else f"_{preset}"
    atomic_write_json(docs / f"results{suffix}.json", results)
    atomic_write_text(docs / f"table{suffix}.md", "\n".join(lines) + "\n")
    plot(results, docs / f"headline{suffix}.png",
         f"{BASE['model']} on {BASE['dataset']} ({BASE['max_train']} images, "
         f"{BASE['epochs']} epochs), up to {seeds} seeds: mean difference and 95% CI")
    print("\n".join(lines))


ARM_LABELS = {"standard": "standard", "dipnet": "DIPNet, learned variances",
              "fixed_noise": "same projections, variances frozen at init",
              "fixed_profile": "same projections, frozen at the learned profile",
              "input_noise": "Gaussian noise on the input", "rs": "randomized smoothing",
              "dipnet_old": "DIPNet, old default (variances barely move)"}


def plot(results: dict[str, Any], path: Path, title: str) -> None:
    """One panel per condition: each arm's test-accuracy difference from standard, paired by
    seed, with its 95% confidence interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [c for c, arms in results["conditions"].items() if "standard" in arms]
    if not conds:
        return
    arms = [a for a in ARM_LABELS if a != "standard"]
    ncols = min(2, len(conds))
    nrows = (len(conds) + ncols - 1) // ncols
    # Two panels a row keep the figure legible at page width.
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols + 2.6, 2.9 * nrows + 0.5),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(conds):]:
        ax.axis("off")
    for ax, cond in zip(axes.flat, conds):
        data = results["conditions"][cond]
        for i, arm in enumerate(arms):
            t = data.get(arm, {}).get("paired", {}).get("standard")
            if t is None:
                continue
            m, lo, hi = 100 * t["mean_diff"], 100 * t["ci_low"], 100 * t["ci_high"]
            colour = "C3" if arm == "dipnet" else ("C0" if arm.startswith("fixed") else "C7")
            ax.errorbar(m, i, xerr=[[m - lo], [hi - m]], fmt="o", color=colour, capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        n = data.get("standard", {}).get("seeds", "?")
        ax.set_title(f"training inputs: {cond} ({n} seeds)", fontsize=9)
        ax.set_xlabel("test accuracy minus standard (points)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    for row in axes:
        row[0].set_yticks(range(len(arms)))
        row[0].set_yticklabels([ARM_LABELS[a] for a in arms], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["run", "report"])
    ap.add_argument("--conditions", default="none,gaussian-fixed,gaussian-fresh,fgsm-fixed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="runs/variance_study")
    ap.add_argument("--docs", default="docs/results/variance_study")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="mlp",
                    help="mlp: from scratch (tuning seeds 0 and 1); finetune: the pretrained "
                         "CNN (tuning seed 0 only, to fit the CPU budget)")
    args = ap.parse_args()
    global TUNE_SEEDS
    BASE.clear()
    BASE.update(PRESETS[args.preset])
    if args.preset == "finetune":
        TUNE_SEEDS = (0,)
    conditions = [c for c in args.conditions.split(",") if c]
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        sys.exit(f"unknown condition(s) {bad}; choose from {list(CONDITIONS)}")
    out = Path(args.out)
    if args.action == "run":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        for cond in conditions:
            run_condition(out, cond, args.seeds, args.jobs)
    report(out, Path(args.docs), args.seeds, conditions, args.preset)


if __name__ == "__main__":
    main()
