"""Is the learned-vs-frozen verdict stable under the tuning itself?

The variance study's verdict came from ONE tune per arm. Here the whole pipeline, `dipnet tune`
(same budget for `dipnet` and `fixed_noise`) then `dipnet compare` of its best.yaml on fresh
seeds, is replicated R times; replicate r changes the tuner's seed, the train/validation split
and the training subset (``split_seed`` r). Reported per replicate: the chosen settings, the
completed / pruned trial counts, and learned minus frozen test accuracy paired by seed; across
replicates: the spread of that verdict beside each replicate's seed interval.

Run:     PYTHONPATH=src .venv/bin/python scripts/tune_replicates.py run [--replicates 3]
                 [--budget 6] [--seeds 3] [--jobs 2] [--objective accuracy]
                 [--out runs/tune_replicates]
Report:  PYTHONPATH=src .venv/bin/python scripts/tune_replicates.py report [...same...]
                 [--docs docs/results/tune_replicates]
Each step is a normal dipnet folder (tune and compare resume), so the script resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from dipnet.experiments.report.stats import paired_test, summarize
from dipnet._util.fileio import atomic_write_json, atomic_write_text

#: The dose-response study's MLP preset (scripts/dose_response.py), so the two studies agree.
BASE = ["--dataset", "fashion_mnist", "--model", "mlp", "--set", "model.hidden=[512,512]",
        "--max-train", "10000", "--epochs", "6", "--batch-size", "128", "--threads", "1"]
METHODS = "dipnet,fixed_noise"


def _dipnet() -> list[str]:
    return [sys.executable, "-m", "dipnet"]


def folders(out: Path, objective: str, r: int) -> tuple[Path, Path]:
    tag = "" if objective == "accuracy" else f"-{objective}"
    return out / f"r{r}{tag}", out / f"r{r}{tag}-compare"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    for r in range(args.replicates):
        if args.only is not None and r != args.only:
            continue
        tune_dir, compare_dir = folders(out, args.objective, r)
        tune = [*_dipnet(), "tune", *BASE, "--method", METHODS, "--budget", str(args.budget),
                "--seed", str(r), "--set", f"split_seed={r}", "--jobs", str(args.jobs),
                "--objective", args.objective, "--out", str(tune_dir), "--no-progress"]
        print("+", " ".join(tune[2:]), flush=True)
        if subprocess.run(tune).returncode:
            return 1
        compare = [*_dipnet(), "compare", "--config", str(tune_dir / "best.yaml"), "--seeds",
                   str(args.seeds), "--evaluate", "none", "--jobs", str(args.jobs), "--out",
                   str(compare_dir), "--no-progress", "--no-report"]
        print("+", " ".join(compare[2:]), flush=True)
        if subprocess.run(compare).returncode:
            return 1
    return 0


def _test_accuracy(compare_dir: Path) -> dict[str, dict[int, float]]:
    """{method: {seed: test accuracy}} of a compare folder's finished runs (the report's
    own reader, `load_runs`)."""
    from dipnet.experiments.report import load_runs

    out: dict[str, dict[int, float]] = {}
    for rec in load_runs(compare_dir)[0]:
        out.setdefault(rec.method, {})[int(rec.config["seed"])] = float(
            rec.metrics["test_accuracy"])
    return out


def report(args: argparse.Namespace) -> int:
    out, docs = Path(args.out), Path(args.docs)
    rows: list[dict[str, Any]] = []
    for r in range(args.replicates):
        tune_dir, compare_dir = folders(out, args.objective, r)
        if not (compare_dir / "runs").is_dir():
            continue
        import yaml

        best = yaml.safe_load((tune_dir / "best.yaml").read_text())
        acc = _test_accuracy(compare_dir)
        seeds = sorted(set(acc.get("dipnet", {})) & set(acc.get("fixed_noise", {})))
        test = paired_test([acc["dipnet"][s] for s in seeds],
                           [acc["fixed_noise"][s] for s in seeds])
        rows.append({
            "replicate": r, "objective": args.objective, "seeds": seeds,
            "chosen": {m: {**best["method_params"].get(m, {}),
                           **best.get("method_run", {}).get(m, {})} for m in ("dipnet",
                                                                             "fixed_noise")},
            "trials": {m: {k: v for k, v in best["tuning"]["methods"][m].items()
                           if k in ("trials", "complete", "pruned", "failed")}
                       for m in ("dipnet", "fixed_noise")},
            "test_accuracy": {m: summarize(list(acc[m].values())).__dict__ for m in acc},
            "learned_minus_frozen": test.to_dict(),
            "commit": (json.loads((compare_dir / "provenance.json").read_text())
                       ["invocations"][0].get("git_commit")
                       if (compare_dir / "provenance.json").is_file() else None),
            "files": [str(tune_dir / "best.yaml"), str(compare_dir)]})
    if not rows:
        print(f"no finished replicate under {out}", file=sys.stderr)
        return 1
    verdicts = [r["learned_minus_frozen"]["mean_diff"] for r in rows]
    spread = summarize(verdicts)
    docs.mkdir(parents=True, exist_ok=True)
    tag = "" if args.objective == "accuracy" else f"_{args.objective}"
    atomic_write_json(docs / f"replicates{tag}.json", {
        "base": BASE, "methods": METHODS, "budget": args.budget, "replicates": rows,
        "verdict_across_replicates": spread.__dict__,
        "command": f"PYTHONPATH=src .venv/bin/python scripts/tune_replicates.py run "
                   f"--replicates {args.replicates} --budget {args.budget} --seeds "
                   f"{args.seeds} --objective {args.objective}"})
    lines = [f"| replicate | dipnet chosen | fixed_noise chosen | trials complete / pruned "
             f"(dipnet; fixed_noise) | learned - frozen (pp, 95% CI over seeds) | p |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        t = r["learned_minus_frozen"]
        ch = {m: ", ".join(f"{k} {v:.3g}" for k, v in r["chosen"][m].items()) for m in
              r["chosen"]}
        tr = "; ".join(f"{r['trials'][m]['complete']} / {r['trials'][m]['pruned']}"
                       for m in ("dipnet", "fixed_noise"))
        lines.append(f"| {r['replicate']} | {ch['dipnet']} | {ch['fixed_noise']} | {tr} | "
                     f"{100 * t['mean_diff']:+.2f} [{100 * t['ci_low']:+.2f}, "
                     f"{100 * t['ci_high']:+.2f}] | {t['t_p']:.3f} |")
    lines += ["", f"Across the {len(rows)} replicates, learned minus frozen: mean "
              f"{100 * spread.mean:+.2f} pp, spread (std) {100 * spread.std:.2f} pp, range "
              f"{100 * min(verdicts):+.2f} to {100 * max(verdicts):+.2f}.", ""]
    atomic_write_text(docs / f"replicates{tag}.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("run", "report"))
    p.add_argument("--replicates", type=int, default=3)
    p.add_argument("--budget", type=int, default=6)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--objective", choices=("accuracy", "robust", "mix"), default="accuracy")
    p.add_argument("--only", type=int, metavar="R",
                   help="run only replicate R (to run replicates side by side)")
    p.add_argument("--out", default="runs/tune_replicates")
    p.add_argument("--docs", default="docs/results/tune_replicates")
    args = p.parse_args(argv)
    return run(args) if args.action == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
