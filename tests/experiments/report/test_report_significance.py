"""The report's significance marks on synthetic sweeps (issue 9 item 4): round-off constant
differences are not tests, two pairs never get a star, real differences still do."""

from __future__ import annotations

import json
import re

from dipnet.experiments.report import build_report, build_results, load_runs, summary_table
from report_synthetic import write_sweep

BASE = {0: 0.80, 1: 0.81, 2: 0.79, 3: 0.82, 4: 0.78, 5: 0.80}


def _row(md: str, method: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {method} |"))


def test_roundoff_constant_difference_shows_na_and_no_star(tmp_path):
    # the case: differences 0.2, 0.2000000001, 0.2, which scipy's paired t-test turns
    # into p ~ 1e-20 and the old report starred as "<0.001*".
    std, dip = {0: 0.7, 1: 0.5999999999, 2: 0.5}, {0: 0.9, 1: 0.8, 2: 0.7}
    write_sweep(tmp_path, lambda m, s, p: dip[s] if m == "dipnet" else std[s],
                variance_layout=None)
    paths = build_report(tmp_path)
    md = paths.markdown.read_text()
    row = _row(md, "dipnet")
    assert "n/a (constant difference)" in row and "*" not in row and "<0.001" not in row
    res = json.loads(paths.results_json.read_text())
    t = next(t for t in res["paired_tests"] if t["method"] == "dipnet"
             and t["metric"] == "test_accuracy")
    assert t["degenerate"] is True and t["t_p"] is None and t["significant"] is False
    # the caveat quotes the true exact-Wilcoxon floor for 3 pairs
    assert "2/2^3 = 0.25" in md


def test_two_pairs_are_never_starred_and_the_note_says_half(tmp_path):
    # a large, consistent gain over two seeds: t-test p = 0.03 (1 df), still no star
    gain = {0: 0.050, 1: 0.051}
    write_sweep(tmp_path, lambda m, s, p: BASE[s] + (gain[s] if m == "dipnet" else 0.0),
                seeds=(0, 1), variance_layout=None)
    res = build_results(load_runs(tmp_path)[0])
    t = next(t for t in res["paired_tests"] if t["method"] == "dipnet"
             and t["metric"] == "test_accuracy")
    assert t["n"] == 2 and t["t_p"] < 0.05 and t["significant"] is False
    assert "*" not in _row(summary_table(res, "mnist", "mlp"), "dipnet")
    notes = " ".join(res["notes"])
    assert "2/2^2 = 0.5" in notes and "cannot go below p=0.25" not in notes


def test_a_real_difference_over_six_seeds_is_starred(tmp_path):
    gain = {0: 0.020, 1: 0.025, 2: 0.018, 3: 0.030, 4: 0.022, 5: 0.027}
    write_sweep(tmp_path, lambda m, s, p: BASE[s] + (gain[s] if m == "dipnet" else 0.0),
                seeds=tuple(range(6)), variance_layout=None)
    table = summary_table(build_results(load_runs(tmp_path)[0]), "mnist", "mlp")
    assert re.search(r"\| dipnet \|.*\| <0\.001\* \| 0\.031 \|", _row(table, "dipnet"))
