"""Dose-response study: does LEARNING the variances beat the same projections FROZEN, at the
same noise level?

The variance study compared each arm at its own tuned level, and the levels were chosen by a
few validation images. Here no level is chosen: both arms run on one shared grid of starting
levels (``init_scale``: each projection starts at that multiple of its own input's per-feature
variance), from the same start, with the same learning rate and seeds. At each level:
  dipnet       the variances learned (log-variance, own Adam lr 0.1, ELBO barrier)
  fixed_noise  the same projections, variances frozen at the start
plus standard training as the reference, and the learned arm's own level knob, the barrier
temperature (a multiplier on the barrier; where learning ENDS), at one starting level.
Every run is then evaluated (PGD with EOT for sampled predictions, corruptions, calibration),
so accuracy and robustness are read against the level, both arms on one figure.

Conditions: clean training inputs, and the training set perturbed once by Gaussian noise
(sigma 0.2; the paper's Table 1 reading). Clean test set.

Run:     PYTHONPATH=src .venv/bin/python scripts/dose_response.py run --arch mlp [--jobs 2]
                 [--seeds 3] [--out runs/dose_response]
Report:  PYTHONPATH=src .venv/bin/python scripts/dose_response.py report --arch mlp
                 [--out runs/dose_response] [--docs docs/results/dose_response]
Finished runs and evaluations are reused, so an interrupted run resumes. Each result records
the commit it ran on (``git rev-parse HEAD`` of the checkout the script runs from).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.run.rundir import read_metrics
from dipnet.experiments.report.stats import holm, paired_test, summarize
from dipnet.experiments.sweep.grid import git_commit
from dipnet.experiments.run.train import run_training
from dipnet._util.fileio import atomic_write_json, atomic_write_text

#: Scaled for a 2-core CPU shared with other work (see the study page for what each costs).
PRESETS: dict[str, dict[str, Any]] = {
    "mlp": dict(dataset="fashion_mnist", model="mlp", model_params={"hidden": [512, 512]},
                max_train=10000, epochs=6, batch_size=128, lr=1e-3, lr_schedule="cosine",
                mc_samples=8, eval_mc=False, num_threads=1, device="cpu"),
    "resnet": dict(dataset="fashion_mnist", model="resnet8", model_params={"width": 8},
                   max_train=4000, epochs=4, batch_size=128, lr=3e-3, lr_schedule="cosine",
                   mc_samples=8, eval_mc=False, num_threads=1, device="cpu"),
    # The ViT study's fine-tuning (configs/vit_finetune.yaml): a Hugging Face ViT pretrained on
    # MNIST by configs/vit_pretrain.yaml (run that first, from the same folder).
    "vit": dict(dataset="fashion_mnist", model="hf_vit",
                model_params={"patch_size": 7, "hidden": 64, "depth": 4, "heads": 4,
                              "mlp_ratio": 2.0,
                              "weights": "runs/pretrained/hf_vit_mnist/model.safetensors"},
                max_train=5000, epochs=8, batch_size=128, lr=1e-3, lr_schedule="cosine",
                mc_samples=8, eval_mc=False, num_threads=1, device="cpu"),
    # A seconds-long smoke preset for the script's own test (tests/project/test_script_dose_response.py).
    "digits": dict(dataset="digits", model="mlp", model_params={"hidden": [32]}, epochs=2,
                   batch_size=64, lr=3e-3, mc_samples=4, eval_mc=False, num_threads=1,
                   device="cpu"),
}
LEVELS = (0.03, 0.1, 0.3, 1.0)
TEMPERATURE_LEVEL = 0.1
TEMPERATURES = (0.1, 10.0)
RECIPE = {"parameterization": "exp", "variance_lr": 0.1}
CONDITIONS = {"none": ("none", "fresh"), "gaussian-fixed": ("gaussian", "fixed")}
#: The quick suite, trimmed to what the figures read, with fewer points (stated on the page).
EVAL = dict(parts=("clean", "calibration", "attacks", "corruptions"), attack_points=200,
            linf_eps=(0.0, 0.05, 0.1), l2_eps=(0.0, 1.0), pgd_steps=10, corruption_points=150,
            eot_samples=8)
#: Per-architecture trims of EVAL: a ResNet's sampled prediction over the whole test set cost
#: 9 of its 20 evaluation minutes on the loaded machine, so it reads 2,000 test images.
EVAL_BY_ARCH: dict[str, dict[str, Any]] = {"resnet": {"clean_points": 2000, "attack_points": 100},
                                           "vit": {"clean_points": 2000}}


def eval_settings(arch: str) -> dict[str, Any]:
    """The evaluation settings of ``arch``'s runs."""
    return {**EVAL, **EVAL_BY_ARCH.get(arch, {})}


def arms(temperature: bool = True) -> list[tuple[str, str, dict[str, Any]]]:
    """(arm label, method, method params), in the order they run (most important first);
    ``temperature=False`` leaves out the barrier-temperature arms."""
    out: list[tuple[str, str, dict[str, Any]]] = [("standard", "standard", {})]
    for level in LEVELS:
        out.append((f"dipnet@{level:g}", "dipnet", {**RECIPE, "init_scale": level}))
        out.append((f"fixed_noise@{level:g}", "fixed_noise", {"init_scale": level}))
    for t in TEMPERATURES if temperature else ():
        out.append((f"dipnet@{TEMPERATURE_LEVEL:g},T={t:g}", "dipnet",
                    {**RECIPE, "init_scale": TEMPERATURE_LEVEL, "barrier_temperature": t}))
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".=" else "_" for c in text)


def run_dir(out: Path, arch: str, condition: str, arm: str, seed: int) -> Path:
    return out / arch / condition / _slug(arm) / f"s{seed}"


def make_config(arch: str, condition: str, method: str, params: dict[str, Any], seed: int,
                out: Path) -> RunConfig:
    perturbation, mode = CONDITIONS[condition]
    data = {**PRESETS[arch], "method": method, "method_params": dict(params), "seed": seed,
            "train_perturbation": perturbation}
    if perturbation != "none":
        data["perturbation_mode"] = mode
        data["reference_cache"] = str(out / "_reference")
    return RunConfig.from_dict(data)


def commit() -> str:
    """The commit of the checkout this script runs from (recorded with every result), marked
    ``-dirty`` when tracked files differ from it."""
    sha = git_commit()
    if sha is None:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=Path(__file__).resolve().parent, capture_output=True,
                           text=True).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def _evaluated(path: Path | str, settings: dict[str, Any]) -> bool:
    """Whether the run at ``path`` holds an evaluation made with ``settings`` (the sweep's
    reuse rule: one made with other settings is redone, not mixed into the study)."""
    from dipnet.evaluation.settings import get_settings
    from dipnet.experiments.sweep.grid import evaluation_is_current

    return evaluation_is_current(Path(path), "quick", get_settings("quick", **settings))


def _job(job: tuple[dict[str, Any], str, str, dict[str, Any]]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    cfg_dict, path, sha, settings = job
    cfg = RunConfig.from_dict(cfg_dict)
    t0 = time.perf_counter()
    try:
        run_training(cfg, path, progress=False, command="scripts/dose_response.py")
        if not _evaluated(path, settings):
            from dipnet.experiments.assess.evaluate import evaluate_run

            evaluate_run(path, suite="quick", device="cpu", progress=False, **settings)
        stamp = Path(path) / "study_commit.txt"
        if not stamp.is_file():
            atomic_write_text(stamp, sha + "\n")
    except Exception as err:  # one failed run must not stop the sweep; it is reported
        return {"path": path, "error": f"{type(err).__name__}: {err}"}
    return {"path": path, "seconds": time.perf_counter() - t0}


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    sha = commit()
    jobs = []
    # Seed-major: if the budget runs out, every arm has the same seeds done.
    for seed in range(args.seeds):
        for condition in args.conditions.split(","):
            for arm, method, params in arms(not args.no_temperature):
                cfg = make_config(args.arch, condition, method, params, seed, out)
                path = run_dir(out, args.arch, condition, arm, seed)
                settings = eval_settings(args.arch)
                if (path / "metrics.json").is_file() and _evaluated(path, settings):
                    continue
                jobs.append((cfg.to_dict(), str(path), sha, settings))
    print(f"dose_response: {len(jobs)} runs to do ({args.arch}, commit {sha})", flush=True)
    done = 0
    with cf.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for res in pool.map(_job, jobs):
            done += 1
            what = res.get("error") or f"{res['seconds']:.0f} s"
            print(f"[{done}/{len(jobs)}] {res['path']}: {what}", flush=True)
    return 0


# ---------------------------------------------------------------------- report
def _eval_numbers(ev: dict[str, Any], prediction: str) -> dict[str, float]:
    def pick(rows: list[dict[str, Any]], **match: Any) -> float:
        for r in rows:
            if all(r.get(k) == v for k, v in match.items()):
                return float(r["accuracy"])
        return float("nan")

    att = ev.get("attacks") or []
    return {
        "pgd_linf_0.05": pick(att, attack="pgd", norm="linf", eps=0.05, prediction=prediction),
        "pgd_linf_0.1": pick(att, attack="pgd", norm="linf", eps=0.1, prediction=prediction),
        "pgd_l2_1": pick(att, attack="pgd", norm="l2", eps=1.0, prediction=prediction),
        "corruptions": pick(ev.get("corruptions") or [], corruption="mean",
                            prediction=prediction),
        "ece": float((ev.get("calibration") or {}).get(prediction, {}).get("ece", math.nan)),
    }


METRICS = ("test_accuracy", "pgd_linf_0.05", "pgd_linf_0.1", "pgd_l2_1", "corruptions", "ece",
           "certified_l2_0.1", "certified_l2_0.25")
#: Radii read from certify.json where a run was certified (`dipnet certify RUN --n 10000`).
CERT_RADII = (0.1, 0.25)


def collect(out: Path, arch: str, seeds: int) -> dict[str, Any]:
    """Every finished run's numbers: {condition: {arm: {seed: {metric: value}}}}."""
    table: dict[str, Any] = {}
    commits: set[str] = set()
    for condition in CONDITIONS:
        for arm, _, _ in arms():
            for seed in range(seeds):
                path = run_dir(out, arch, condition, arm, seed)
                ev_path = path / "evaluation.json"
                if not (path / "metrics.json").is_file() or not ev_path.is_file():
                    continue
                metrics = read_metrics(path)
                ev = json.loads(ev_path.read_text())
                pred = ev.get("default_prediction", "deterministic")
                row = {"test_accuracy": float(metrics["test_accuracy"]),
                       **_eval_numbers(ev, pred)}
                cert_path = path / "certify.json"
                if cert_path.is_file():  # dipnet certify RUN (docs/evaluation.md)
                    cert = json.loads(cert_path.read_text())
                    for point in cert["certified_accuracy"]:
                        if point["radius"] in CERT_RADII:
                            row[f"certified_l2_{point['radius']:g}"] = float(point["accuracy"])
                table.setdefault(condition, {}).setdefault(arm, {})[seed] = row
                stamp = path / "study_commit.txt"
                if stamp.is_file():
                    commits.add(stamp.read_text().strip())
    return {"table": table, "commits": sorted(commits)}


def _paired(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], metric: str
            ) -> dict[str, Any] | None:
    """``a - b`` paired by seed (the report's paired test), or None below two pairs."""
    seeds = sorted(s for s in set(a) & set(b) if metric in a[s] and metric in b[s])
    test = paired_test([a[s][metric] for s in seeds], [b[s][metric] for s in seeds])
    if test.n < 2:
        return None
    return {"diff": test.mean_diff, "ci_low": test.ci_low, "ci_high": test.ci_high,
            "p": test.t_p, "n": test.n}


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """Per condition and metric: each arm's mean and CI, learned minus frozen at each level
    (paired by seed) and each arm minus standard, Holm-corrected within (condition, metric)."""
    result: dict[str, Any] = {}
    for condition, by_arm in data["table"].items():
        for metric in METRICS:
            cell: dict[str, Any] = {"arms": {}, "learned_minus_frozen": {}, "vs_standard": {}}
            for arm, seeds in by_arm.items():
                s = summarize([r[metric] for r in seeds.values() if metric in r])
                if s.n:
                    cell["arms"][arm] = {"mean": s.mean, "ci_low": s.ci_low,
                                         "ci_high": s.ci_high, "n": s.n}
            tests = []
            for level in LEVELS:
                a, b = by_arm.get(f"dipnet@{level:g}"), by_arm.get(f"fixed_noise@{level:g}")
                if a and b:
                    t = _paired(a, b, metric)
                    if t:
                        cell["learned_minus_frozen"][f"{level:g}"] = t
                        tests.append(t)
            std = by_arm.get("standard")
            for arm, seeds in by_arm.items():
                if arm != "standard" and std:
                    t = _paired(seeds, std, metric)
                    if t:
                        cell["vs_standard"][arm] = t
                        tests.append(t)
            if tests:
                for t, p in zip(tests, holm([t["p"] for t in tests])):
                    t["p_holm"] = p
            result.setdefault(condition, {})[metric] = cell
    return result


LABELS = {"test_accuracy": "clean test accuracy", "pgd_linf_0.05": "PGD L-inf 0.05 (EOT)",
          "pgd_linf_0.1": "PGD L-inf 0.1 (EOT)", "pgd_l2_1": "PGD L2 1.0 (EOT)",
          "corruptions": "corruptions (mean of 7 x 2 severities)", "ece": "ECE",
          "certified_l2_0.1": "certified accuracy, L2 radius 0.1",
          "certified_l2_0.25": "certified accuracy, L2 radius 0.25"}


def figure(analysis: dict[str, Any], arch: str, path: Path) -> None:
    """Accuracy and robustness against the starting level: learned and frozen on each panel,
    standard as a band, 95% intervals over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = list(analysis)
    metrics = ("test_accuracy", "pgd_linf_0.05", "corruptions", "ece")
    fig, axes = plt.subplots(len(conds), len(metrics) + 1, figsize=(4.2 * (len(metrics) + 1),
                                                                     3.3 * len(conds)),
                             squeeze=False)
    for i, cond in enumerate(conds):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            arms_ = analysis[cond][metric]["arms"]
            for base, colour, marker in (("dipnet", "#1f77b4", "o"),
                                         ("fixed_noise", "#d62728", "s")):
                pts = [(lv, arms_[f"{base}@{lv:g}"]) for lv in LEVELS
                       if f"{base}@{lv:g}" in arms_]
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ys = [100 * p[1]["mean"] for p in pts]
                lo = [100 * (p[1]["mean"] - p[1]["ci_low"]) if not math.isnan(p[1]["ci_low"])
                      else 0 for p in pts]
                hi = [100 * (p[1]["ci_high"] - p[1]["mean"]) if not math.isnan(p[1]["ci_high"])
                      else 0 for p in pts]
                label = "learned (dipnet)" if base == "dipnet" else "frozen (fixed_noise)"
                ax.errorbar(xs, ys, yerr=[lo, hi], color=colour, marker=marker, capsize=3,
                            label=label)
            for t, marker in zip(TEMPERATURES, ("v", "^")):
                key = f"dipnet@{TEMPERATURE_LEVEL:g},T={t:g}"
                if key in arms_:
                    ax.plot([TEMPERATURE_LEVEL], [100 * arms_[key]["mean"]], marker=marker,
                            color="#1f77b4", linestyle="none", markerfacecolor="white",
                            label=f"learned, barrier x{t:g}")
            if "standard" in arms_:
                s = arms_["standard"]
                ax.axhline(100 * s["mean"], color="grey", linestyle="--", label="standard")
                if not math.isnan(s["ci_low"]):
                    ax.axhspan(100 * s["ci_low"], 100 * s["ci_high"], color="grey", alpha=0.15)
            ax.set_xscale("log")
            ax.set_xticks(list(LEVELS), [f"{lv:g}" for lv in LEVELS])
            ax.minorticks_off()
            ax.set_xlabel("starting level init_scale (x each layer's input variance)")
            ax.set_ylabel(("%" if metric != "ece" else "ECE %"))
            ax.set_title(f"{cond}: {LABELS[metric]}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    for i, cond in enumerate(conds):
        _frontier(axes[i][len(metrics)], analysis[cond], cond)
    fig.suptitle(f"{arch}: learned vs frozen variances against the noise level "
                 f"(mean and 95% CI over seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _frontier(ax: Any, by_metric: dict[str, Any], cond: str) -> None:
    """Clean accuracy against PGD accuracy, one point per (arm, level): does learning move
    the trade-off curve, or pick a point on it?"""
    clean, robust = by_metric["test_accuracy"]["arms"], by_metric["pgd_linf_0.05"]["arms"]
    for base, colour, marker in (("dipnet", "#1f77b4", "o"), ("fixed_noise", "#d62728", "s")):
        pts = [(100 * clean[k]["mean"], 100 * robust[k]["mean"], lv) for lv in LEVELS
               if (k := f"{base}@{lv:g}") in clean and k in robust]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, marker=marker,
                    label="learned" if base == "dipnet" else "frozen")
            for x, y, lv in pts:
                ax.annotate(f"{lv:g}", (x, y), textcoords="offset points", xytext=(4, 3),
                            fontsize=7, color=colour)
    if "standard" in clean and "standard" in robust:
        ax.plot([100 * clean["standard"]["mean"]], [100 * robust["standard"]["mean"]],
                marker="*", markersize=11, color="grey", linestyle="none", label="standard")
    ax.set_xlabel("clean test accuracy %")
    ax.set_ylabel("PGD L-inf 0.05 (EOT) %")
    ax.set_title(f"{cond}: accuracy vs robustness (labels: level)", fontsize=9)
    ax.legend(fontsize=7)


def _fmt_test(t: dict[str, Any] | None) -> str:
    if not t:
        return "-"
    star = "*" if t.get("p_holm", 1) < 0.05 else ""
    return (f"{100 * t['diff']:+.2f} [{100 * t['ci_low']:+.2f}, {100 * t['ci_high']:+.2f}] "
            f"p {t['p']:.3f} / Holm {t.get('p_holm', math.nan):.3f}{star}")


def markdown(analysis: dict[str, Any], arch: str, data: dict[str, Any], seeds: int) -> str:
    lines = [f"## {arch}", "",
             f"Preset: `{json.dumps(PRESETS[arch])}`; levels {list(LEVELS)}; {seeds} seeds; "
             f"commits {', '.join(data['commits']) or 'unknown'}.", ""]
    for cond, by_metric in analysis.items():
        lines += [f"### {cond}", "", "Learned minus frozen at the same starting level, "
                  "paired by seed (percentage points, 95% CI, raw p / Holm-corrected p over "
                  "every test of this condition and metric; `*` Holm p < 0.05):", "",
                  "| metric | " + " | ".join(f"level {lv:g}" for lv in LEVELS) + " |",
                  "| --- |" + " --- |" * len(LEVELS)]
        for metric, cell in by_metric.items():
            lines.append(f"| {LABELS[metric]} | " + " | ".join(
                _fmt_test(cell["learned_minus_frozen"].get(f"{lv:g}")) for lv in LEVELS) + " |")
        lines += ["", "Each arm minus standard training (same format):", "",
                  "| arm | " + " | ".join(LABELS[m] for m in by_metric) + " |",
                  "| --- |" + " --- |" * len(by_metric)]
        arm_names = [a for a, _, _ in arms() if a != "standard"]
        for arm in arm_names:
            lines.append(f"| {arm} | " + " | ".join(
                _fmt_test(by_metric[m]["vs_standard"].get(arm)) for m in by_metric) + " |")
        lines += ["", "Means (%, 95% CI; n seeds):", "",
                  "| arm | " + " | ".join(LABELS[m] for m in by_metric) + " |",
                  "| --- |" + " --- |" * len(by_metric)]
        for arm in [a for a, _, _ in arms()]:
            cells = []
            for m in by_metric:
                s = by_metric[m]["arms"].get(arm)
                cells.append("-" if not s else f"{100 * s['mean']:.2f} "
                             f"[{100 * s['ci_low']:.2f}, {100 * s['ci_high']:.2f}] n{s['n']}")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def report(args: argparse.Namespace) -> int:
    out, docs = Path(args.out), Path(args.docs)
    data = collect(out, args.arch, args.seeds)
    if not data["table"]:
        print(f"no finished runs under {out / args.arch}", file=sys.stderr)
        return 1
    analysis = analyse(data)
    docs.mkdir(parents=True, exist_ok=True)
    figure(analysis, args.arch, docs / f"{args.arch}_dose_response.png")
    atomic_write_json(docs / f"{args.arch}.json", {
        "arch": args.arch, "preset": PRESETS[args.arch], "levels": list(LEVELS),
        "temperatures": list(TEMPERATURES), "temperature_level": TEMPERATURE_LEVEL,
        "evaluation": {k: list(v) if isinstance(v, tuple) else v
                       for k, v in eval_settings(args.arch).items()},
        "commits": data["commits"], "runs": data["table"], "analysis": analysis,
        "command": f"PYTHONPATH=src .venv/bin/python scripts/dose_response.py run --arch "
                   f"{args.arch} --seeds {args.seeds}"})
    atomic_write_text(docs / f"{args.arch}.md", markdown(analysis, args.arch, data, args.seeds))
    print(f"wrote {docs / (args.arch + '.md')}, .json and _dose_response.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("run", "report"))
    p.add_argument("--arch", choices=sorted(PRESETS), default="mlp")
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-temperature", action="store_true",
                   help="leave out the barrier-temperature arms (run: a smaller budget)")
    p.add_argument("--out", default="runs/dose_response")
    p.add_argument("--docs", default="docs/results/dose_response")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return run(args) if args.action == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
