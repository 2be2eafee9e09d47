"""Paired comparison of two methods of one sweep, seed by seed (the sweep report compares every
method with standard training only).

Usage:
    .venv/bin/python scripts/paired_arms.py SWEEP_DIR [A:B ...]

SWEEP_DIR is a `dipnet compare` output folder (its results.csv); each A:B pair (default
dipnet:fixed_noise input_noise:dipnet input_noise:fixed_noise rs:dipnet) prints, per training
condition, the mean test-accuracy difference A - B in points over the seeds both ran, its 95 %
t interval, the paired t-test and Wilcoxon p-values and how many seeds A won.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from scipy import stats

DEFAULT_PAIRS = ("dipnet:fixed_noise", "input_noise:dipnet", "input_noise:fixed_noise",
                 "rs:dipnet")


def load(path: Path) -> dict[tuple[str, str], dict[int, float]]:
    """Test accuracy per (condition, method) and seed from a sweep's results.csv."""
    acc: dict[tuple[str, str], dict[int, float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["row_type"] == "run":
                key = (row["train_perturbation"], row["method"])
                acc.setdefault(key, {})[int(row["seed"])] = float(row["test_accuracy"])
    return acc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("pairs", nargs="*", default=list(DEFAULT_PAIRS), help="A:B method pairs")
    args = ap.parse_args()
    path = args.sweep_dir / "results.csv"
    if not path.is_file():
        print(f"error: {path} not found; pass a `dipnet compare` output folder", file=sys.stderr)
        return 2
    acc = load(path)
    for cond in sorted({c for c, _ in acc}):
        for pair in args.pairs:
            a, _, b = pair.partition(":")
            if (cond, a) not in acc or (cond, b) not in acc:
                print(f"{cond}: {pair}: method missing from the sweep")
                continue
            seeds = sorted(set(acc[cond, a]) & set(acc[cond, b]))
            if len(seeds) < 3:
                print(f"{cond}: {pair}: fewer than 3 common seeds")
                continue
            xa = np.array([acc[cond, a][s] for s in seeds])
            xb = np.array([acc[cond, b][s] for s in seeds])
            d = (xa - xb) * 100
            t = stats.ttest_rel(xa, xb)
            wil = stats.wilcoxon(d).pvalue if np.any(d != 0) else float("nan")
            lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
            print(f"{cond}: {a} - {b}: {d.mean():+.2f} pp [95% CI {lo:+.2f}, {hi:+.2f}], "
                  f"paired t p {t.pvalue:.3f}, Wilcoxon p {wil:.3f}, "
                  f"{int((d > 0).sum())}/{len(d)} wins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
