"""Paired comparison of two methods of one sweep, seed by seed (the sweep report compares every
method with standard training only).

Usage:
    .venv/bin/python scripts/paired_arms.py SWEEP_DIR [A:B ...]

SWEEP_DIR is a `dipnet compare` output folder (its results.csv); each A:B pair (default
dipnet:fixed_noise input_noise:dipnet input_noise:fixed_noise rs:dipnet) prints, per training
condition, the mean test-accuracy difference A - B in points over the seeds both ran, its 95 %
t interval, the paired t-test and Wilcoxon p-values (`dipnet.experiments.report.stats.paired_test`,
as in the sweep report) and how many seeds A won.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from dipnet.experiments.report.stats import format_p, paired_test

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
            test = paired_test([acc[cond, a][s] for s in seeds], [acc[cond, b][s] for s in seeds])
            wins = sum(acc[cond, a][s] > acc[cond, b][s] for s in seeds)
            print(f"{cond}: {a} - {b}: {100 * test.mean_diff:+.2f} pp [95% CI "
                  f"{100 * test.ci_low:+.2f}, {100 * test.ci_high:+.2f}], paired t p "
                  f"{format_p(test.t_p)}, Wilcoxon p {format_p(test.wilcoxon_p)}, "
                  f"{wins}/{len(seeds)} wins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
