"""What the evaluation suite costs, before and after its speed-ups, measured side by side.

Two parts (both by default; ``--only mc`` or ``--only eval`` picks one):

mc    Monte Carlo prediction: k trajectories as a Python loop (one forward pass each) against
      the batched path of `Predictor.sample_logits` (k copies stacked on the batch axis,
      trajectory-major, in passes of the default row budget) and against one single pass over
      all k * B rows, for k = 8 and 16, on a DIPNet MLP 784-256-256-10 and a DIPNet ResNet-8,
      batch of 500, on --device (cpu by default; cuda if you have one). Medians of
      interleaved rounds, so drift on a shared machine hits all alike; ratios are
      looped / variant (> 1: the variant is faster). Also prints the mean top probability of
      the looped and the batched estimate (same estimator: equal to Monte Carlo error).

eval  `evaluate_run(RUN, "quick")` with the evaluation package of a baseline commit (before
      the speed-ups; --baseline) against the working tree, each in a fresh process, rounds
      interleaved. RUN defaults to the run of the issue's profile command, trained here if
      missing (digits, dipnet, 3 epochs, seed 0: what
      `dipnet train --dataset digits --method dipnet --epochs 3 --out RUN` writes);
      ``--demo`` adds one run per `dipnet demo` method (Fashion-MNIST MLP 256-256, 4 epochs on
      8,000 images, seed 0, clean training inputs) evaluated with the demo's trimmed settings,
      and one demo worker's share of the demo's evaluations (each method's run as often as the
      demo has runs of it per worker, in one process, so in-process caches carry over). Prints wall-clock and CPU
      seconds per part and in total, and the ratio old / new (new also without its disk cache
      of corrupted images: the first evaluation of a data set on a machine); the per-run deterministic
      results must be identical (checked number by number; what differs is printed, apart from
      the deliberate changes listed in KNOWN_CHANGES), the sampled ones agree to Monte Carlo
      error (fresh noise).

Run:  .venv/bin/python benchmarks/bench_evaluation.py [--only mc|eval] [--rounds 3] [--demo]
      [--runs DIR ...] [--baseline REV] [--threads 1] [--device cuda] [--json out.json]
On a shared machine prefer the CPU seconds: wall-clock includes waiting for a core. This is a
benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
# The last commit before the evaluation speed-ups (issue 10 item 7; its evaluation package is
# the "old" side; everything else comes from the working tree).
DEFAULT_BASELINE = "a571c68b12e4927d9568de92811beafc0c71daf9"
WORK = Path(tempfile.gettempdir()) / "dipnet-bench-evaluation"


# ------------------------------------------------------------------------------------ mc
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_mc(rounds: int, threads: int, device: str = "cpu") -> list[dict[str, Any]]:
    import torch

    import dipnet
    from dipnet.evaluation.predictors import sample_logits_looped, sampled_predictor
    from dipnet.experiments.zoo.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows = []
    for name, shape in (("mlp 784-256-256-10", (1, 28, 28)), ("resnet8", (1, 28, 28))):
        model = create_model("mlp" if name.startswith("mlp") else "resnet8", shape, 10)
        dipnet.project(model)
        model.eval().to(device)

        def one(x: torch.Tensor, model: torch.nn.Module = model) -> torch.Tensor:
            with dipnet.sampling(model):
                return model(x)

        x = torch.rand(500, *shape, device=device)
        for k in (8, 16):
            pred = sampled_predictor(one, k)
            one_pass = sampled_predictor(one, k)
            one_pass.chunk = k * x.shape[0]  # every copy in a single pass
            fns: dict[str, Callable[[], Any]] = {
                "looped": lambda: sample_logits_looped(pred, x, k),
                "batched": lambda: pred.sample_logits(x, k),  # the default row budget
                "one_pass": lambda: one_pass.sample_logits(x, k)}
            times: dict[str, list[float]] = {label: [] for label in fns}
            with torch.no_grad():
                for fn in fns.values():
                    fn()  # warm-up (and the activation-size probe of the default budget)
                for _ in range(rounds):
                    for label, fn in fns.items():
                        _sync(device)
                        t0 = time.perf_counter()
                        fn()
                        _sync(device)
                        times[label].append(time.perf_counter() - t0)
                torch.manual_seed(1)
                p_loop = sample_logits_looped(pred, x, k).softmax(-1).mean(0)
                torch.manual_seed(1)
                p_batch = pred.sample_logits(x, k).softmax(-1).mean(0)
            med = {label: statistics.median(v) for label, v in times.items()}
            row = {"model": name, "device": device, "k": k, "batch": 500,
                   "rows_per_pass": pred.rows_per_pass(x),
                   **{f"{label}_ms": 1e3 * v for label, v in med.items()},
                   "looped_over_batched": med["looped"] / med["batched"],
                   "looped_over_one_pass": med["looped"] / med["one_pass"],
                   "mean_prob_looped": p_loop.max(-1).values.mean().item(),
                   "mean_prob_batched": p_batch.max(-1).values.mean().item()}
            rows.append(row)
            print(f"  {name:20s} k={k:2d}  looped {row['looped_ms']:7.1f} ms | batched, "
                  f"{row['rows_per_pass']} rows/pass {row['batched_ms']:7.1f} ms "
                  f"({row['looped_over_batched']:4.2f}x) | one pass of {k * x.shape[0]} rows "
                  f"{row['one_pass_ms']:7.1f} ms ({row['looped_over_one_pass']:4.2f}x) | "
                  f"mean top probability {row['mean_prob_looped']:.4f} vs "
                  f"{row['mean_prob_batched']:.4f}", flush=True)
    return rows


# ---------------------------------------------------------------------------------- eval
_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from dipnet.experiments.assess.evaluate import evaluate_run
if sys.argv[4:] == ["no-disk-cache"]:
    import dipnet.evaluation.corruptions as corruptions
    corruptions.DISK_CACHE_BYTES = 0
c0, w0 = time.process_time(), time.perf_counter()
ev = evaluate_run(sys.argv[1], "quick", progress=False, write=False, **json.loads(sys.argv[2]))
print("RESULT" + json.dumps({"cpu": time.process_time() - c0, "wall": time.perf_counter() - w0,
                             "ev": ev}))
"""
# One process evaluating several runs one after the other, as a `dipnet compare` / `dipnet
# demo` worker does (in-process caches such as the corrupted images then carry over).
_SWEEP_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from dipnet.experiments.assess.evaluate import evaluate_run
c0, w0 = time.process_time(), time.perf_counter()
for run in json.loads(sys.argv[1]):
    evaluate_run(run, "quick", progress=False, write=False, **json.loads(sys.argv[2]))
print("RESULT" + json.dumps({"cpu": time.process_time() - c0, "wall": time.perf_counter() - w0}))
"""


def _old_tree(rev: str) -> Path:
    """A copy of the working tree's src/ with the evaluation package of ``rev``."""
    # Rebuilt every time: the rest of src/ must be the working tree's, as on the "new" side.
    dest = WORK / f"src-{rev[:12]}"
    tmp = WORK / "src-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ROOT / "src" / "dipnet", tmp / "dipnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(tmp / "dipnet" / "evaluation")
    (tmp / "dipnet" / "evaluation").mkdir()
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "src/dipnet/evaluation/"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        (tmp / "dipnet" / "evaluation" / Path(name).name).write_text(text)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    # The loaders look for data in <src>/../data (experiments.data.REPO_DATA): without this
    # link the old side found no MNIST and skipped that OOD pair (cheaper, and not comparable).
    link = WORK / "data"
    if (ROOT / "data").is_dir() and not link.exists():
        link.symlink_to(ROOT / "data", target_is_directory=True)
    return dest


def _evaluate(src: Path, run: Path | list[str], overrides: dict[str, Any], threads: int,
              child: str = _CHILD, disk_cache: bool = True) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    target = json.dumps(run) if isinstance(run, list) else str(run)
    proc = subprocess.run([sys.executable, "-c", child, target, json.dumps(overrides), str(threads)]
                          + ([] if disk_cache else ["no-disk-cache"]),
                          env=env, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"evaluation of {run} with {src} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT"):])


def _train_runs(demo: bool) -> list[tuple[Path, dict[str, Any]]]:
    import torch

    from dipnet.experiments.run.config import RunConfig
    from dipnet.experiments.run.train import run_training

    torch.set_num_threads(1)
    runs: list[tuple[Path, dict[str, Any]]] = []
    cfg = RunConfig(dataset="digits", method="dipnet", epochs=3, seed=0, num_threads=1)
    path = WORK / "runs" / "digits-dipnet"
    run_training(cfg, path, progress=False, command="bench_evaluation")
    runs.append((path, {}))
    if demo:
        from dipnet.cli.sweep import DEMO_SWEEP

        params = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in DEMO_SWEEP["evaluation_params"].items()}
        run_kw = dict(DEMO_SWEEP["run"])
        for method in DEMO_SWEEP["methods"]:
            cfg = RunConfig(dataset=DEMO_SWEEP["dataset"], model=DEMO_SWEEP["model"],
                            method=method, seed=0, **run_kw)
            path = WORK / "runs" / f"demo-{method}"
            run_training(cfg, path, progress=False, command="bench_evaluation")
            runs.append((path, params))
    return runs


# Deterministic numbers that changed on purpose since DEFAULT_BASELINE: (pattern of the path,
# largest allowed |old - new| or None for any, why). The check lists them apart from
# unexplained differences.
KNOWN_CHANGES = [
    (r"calibration\.deterministic\.ece", None,
     "d723e39 reads the ECE off the reliability bins, summed in float64 (was float32)"),
    (r"ood\[.*\]\.auroc", 1e-12,
     "AUROC is the exact rank statistic, not sklearn's floating-point trapezoid sum (1 ulp)"),
]


def _known(path: str, old: Any, new: Any) -> str | None:
    """Why a difference at ``path`` is deliberate (KNOWN_CHANGES), or None."""
    for pattern, tol, why in KNOWN_CHANGES:
        if re.fullmatch(pattern, path):
            numeric = isinstance(old, (int, float)) and isinstance(new, (int, float))
            if tol is None or (numeric and abs(old - new) <= tol):
                return why
    return None


def _deterministic(ev: dict[str, Any]) -> dict[str, Any]:
    """Every number of the deterministic prediction in an evaluation dict, keyed by where it is."""
    rows = {}
    for part, key in (("attacks", ("attack", "norm", "eps")),
                      ("corruptions", ("corruption", "severity")),
                      ("gaussian_noise", ("sigma",)),
                      ("ood", ("out_dataset", "score"))):
        for r in ev.get(part, []):
            if r.get("prediction") == "deterministic":
                rows[part + "[" + ",".join(str(r[k]) for k in key) + "]"] = r
    for part in ("clean", "calibration", "smoothness"):
        if "deterministic" in ev.get(part, {}):
            rows[part + ".deterministic"] = ev[part]["deterministic"]
    return rows


def _deterministic_diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Where the deterministic numbers of two evaluations differ: (path, old, new) triples.

    Only what both hold is compared (a part or key added since the baseline is not a change of
    a number); a row present in one and not the other is listed (old or new None).
    """
    a, b = _deterministic(old), _deterministic(new)
    both = {k.split("[")[0].split(".")[0] for k in a} & {k.split("[")[0].split(".")[0] for k in b}
    out: list[tuple[str, Any, Any]] = [
        (k, "present" if k in a else None, "present" if k in b else None)
        for k in sorted(set(a) ^ set(b)) if k.split("[")[0].split(".")[0] in both]

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) & set(y)):
                walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        elif x != y:
            out.append((path, x, y))

    for k in sorted(set(a) & set(b)):
        walk(a[k], b[k], k)
    return out


def bench_eval(runs: list[tuple[Path, dict[str, Any]]], rounds: int, baseline: str,
               threads: int) -> list[dict[str, Any]]:
    old_src, new_src = _old_tree(baseline), ROOT / "src"
    rows = []
    for run, overrides in runs:
        # "cold": the working tree without its disk cache of corrupted images, i.e. the
        # first evaluation of a data set on a machine (the old side has no disk cache).
        res: dict[str, list[dict[str, Any]]] = {"old": [], "new": [], "cold": []}
        for _ in range(rounds):
            for side, src in (("old", old_src), ("new", new_src), ("cold", new_src)):
                res[side].append(_evaluate(src, run, overrides, threads,
                                           disk_cache=side != "cold"))
        parts = [p for p in res["new"][0]["ev"]["timing"] if p != "load"]

        def med(side: str, key: str) -> float:
            if key in ("cpu", "wall"):
                return statistics.median(r[key] for r in res[side])
            return statistics.median(r["ev"]["timing"].get(key, 0.0) for r in res[side])

        diffs = {(path, repr(x), repr(y)): _known(path, x, y)
                 for o, n in zip(res["old"], res["new"])
                 for path, x, y in _deterministic_diff(o["ev"], n["ev"])}
        known = sorted(f"{p}: {x} -> {y} [{why}]" for (p, x, y), why in diffs.items() if why)
        unexplained = sorted(f"{p}: {x} -> {y}" for (p, x, y), why in diffs.items() if not why)
        row = {"run": run.name, "method": res["new"][0]["ev"]["method"],
               "overrides": overrides, "rounds": rounds,
               "identical_deterministic": not unexplained,
               "deterministic_differences": unexplained, "known_changes": known,
               "old": {p: med("old", p) for p in parts + ["cpu", "wall"]},
               "new": {p: med("new", p) for p in parts + ["cpu", "wall"]},
               "new_no_disk_cache": {p: med("cold", p) for p in parts + ["cpu", "wall"]}}
        rows.append(row)
        print(f"\n  {run.name} ({row['method']}; {'demo settings' if overrides else 'quick suite'}),"
              f" medians of {rounds} interleaved rounds; deterministic results identical: "
              f"{row['identical_deterministic']}"
              + (f" (apart from {len(known)} deliberate change(s), listed)" if known else ""))
        for d in unexplained[:20]:
            print(f"    DIFFERS {d}")
        for d in known[:5]:
            print(f"    deliberate: {d}")
        print(f"    {'part':12s} {'old s':>8s} {'new s':>8s} {'old/new':>8s} "
              f"{'no disk cache s':>16s} {'old/that':>8s}")
        for p in parts + ["cpu", "wall"]:
            o, n, c = row["old"][p], row["new"][p], row["new_no_disk_cache"][p]
            label = {"total": "total (wall)", "cpu": "process CPU", "wall": "incl. loading"}.get(p, p)
            print(f"    {label:12s} {o:8.2f} {n:8.2f} {o / n if n > 0 else float('nan'):8.2f} "
                  f"{c:16.2f} {o / c if c > 0 else float('nan'):8.2f}")
    if len(rows) > 1:
        tot = {s: sum(r[s]["total"] for r in rows) for s in ("old", "new")}
        cpu = {s: sum(r[s]["cpu"] for r in rows) for s in ("old", "new")}
        print(f"\n  all runs, one process each: suite wall {tot['old']:.1f} s -> {tot['new']:.1f} s "
              f"({tot['old'] / tot['new']:.2f}x); CPU {cpu['old']:.1f} s -> {cpu['new']:.1f} s "
              f"({cpu['old'] / cpu['new']:.2f}x)")
    demo = [(r, o) for r, o in runs if r.name.startswith("demo-")]
    if demo:
        # One `dipnet demo` worker's share: the demo evaluates its runs (methods x seeds x
        # training perturbations) in `jobs` worker processes; each method's seed-0 run stands
        # for all of that method's runs (same model and settings, so the same cost).
        from dipnet.cli.sweep import DEMO_SWEEP

        n_runs = (len(DEMO_SWEEP["methods"]) * len(DEMO_SWEEP["seeds"])
                  * len(DEMO_SWEEP["train_perturbations"]))
        share = [str(r) for r, _ in demo] * max(1, round(n_runs / DEMO_SWEEP["jobs"] / len(demo)))
        sweep: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for _ in range(rounds):
            for side, src in (("old", old_src), ("new", new_src)):
                sweep[side].append(_evaluate(src, share, demo[0][1], threads, _SWEEP_CHILD))
        med = {side: {k: statistics.median(r[k] for r in sweep[side]) for k in ("cpu", "wall")}
               for side in sweep}
        rows.append({"run": f"one demo worker: {len(share)} evaluations in one process",
                     "evaluations": len(share), "workers": DEMO_SWEEP["jobs"],
                     "old": med["old"], "new": med["new"]})
        print(f"\n  one demo worker ({len(share)} of the demo's {n_runs} evaluations in one process, "
              f"{DEMO_SWEEP['jobs']} workers), medians of {rounds}: CPU {med['old']['cpu']:.1f} s -> "
              f"{med['new']['cpu']:.1f} s ({med['old']['cpu'] / med['new']['cpu']:.2f}x); wall "
              f"{med['old']['wall']:.1f} s -> {med['new']['wall']:.1f} s "
              f"({med['old']['wall'] / med['new']['wall']:.2f}x)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("mc", "eval"), default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="device of the mc part (cpu, cuda)")
    ap.add_argument("--demo", action="store_true", help="also the demo runs (one per method), demo settings, and one demo worker")
    ap.add_argument("--runs", nargs="*", default=None, metavar="DIR",
                    help="evaluate these run folders (quick suite) instead of training")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="commit of the 'old' evaluation")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import platform

    import torch

    print(f"bench_evaluation: torch {torch.__version__}, {platform.machine()}, "
          f"{args.threads} thread(s), {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    out: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds}
    if args.only in (None, "mc"):
        print(f"\nMonte Carlo prediction on {args.device}, k trajectories (no_grad, batch 500):")
        out["mc"] = bench_mc(max(args.rounds, 5), args.threads, args.device)
    if args.only in (None, "eval"):
        print(f"\nquick evaluation, old = evaluation package of {args.baseline[:12]}, "
              "new = working tree:")
        runs = ([(Path(r), {}) for r in args.runs] if args.runs else _train_runs(args.demo))
        out["eval"] = bench_eval(runs, args.rounds, args.baseline, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
