"""scripts/paired_arms.py: the seed-by-seed difference of two methods of a sweep."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_it_pairs_the_runs_by_seed_and_condition(tmp_path) -> None:
    rows = [("run", "gaussian", "dipnet", s, 0.80 + 0.01 * s) for s in range(4)]
    rows += [("run", "gaussian", "fixed_noise", s, 0.81 + 0.01 * s + 0.001 * (s % 2))
             for s in range(4)]
    rows += [("aggregate", "gaussian", "dipnet", "", 0.5)]  # not a run: ignored
    with (tmp_path / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row_type", "train_perturbation", "method", "seed", "test_accuracy"])
        w.writerows(rows)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "paired_arms.py"), str(tmp_path),
                          "dipnet:fixed_noise"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # differences -1.0, -1.1, -1.0, -1.1 points: mean -1.05, fixed_noise wins every seed
    assert out.stdout.startswith("gaussian: dipnet - fixed_noise: -1.05 pp"), out.stdout
    assert "0/4 wins" in out.stdout


def test_a_folder_without_results_is_one_line(tmp_path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "paired_arms.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "results.csv" in out.stderr
