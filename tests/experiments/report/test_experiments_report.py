"""The sweep report, built from real tiny runs (digits, 1 epoch, 2 methods, 2 seeds, 2 of the
paper's training-input conditions): tables, paired tests, figures, HTML, results.json/csv."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest

from dipnet.experiments.report import build_report, flatten_evaluation, load_runs
from dipnet.experiments.sweep.grid import SweepConfig, run_sweep

SWEEP = {"dataset": "digits", "model": "mlp", "methods": ["standard", "dipnet"],
         "seeds": [0, 1], "train_perturbations": ["none", "gaussian"],
         "run": {"epochs": 1, "num_threads": 1, "batch_size": 64,
                 "model_params": {"hidden": [32]}}}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    run_sweep(SweepConfig.from_dict(SWEEP), out, progress=False, command=["dipnet", "test"])
    return out, build_report(out)


def test_report_files_exist_and_are_small(report):
    out, paths = report
    for p in (paths.markdown, paths.html, paths.results_json, paths.results_csv):
        assert p.is_file() and 0 < p.stat().st_size < 1_000_000
    names = {p.name for p in paths.figures}
    assert {"accuracy_digits_mlp.png", "forest_digits_mlp.png", "curves_digits_mlp_none.png",
            "curves_digits_mlp_gaussian.png", "variance_trajectory_digits_mlp_none.png",
            "variance_trajectory_digits_mlp_gaussian.png", "cost_digits_mlp.png"} <= names
    for p in paths.figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_has_the_expected_sections_and_protocol_table(report):
    _, paths = report
    md = paths.markdown.read_text()
    for heading in ("## Clean test accuracy (digits / mlp)", "## Learning curves",
                    "## Learned variance per layer", "## Compute cost", "## Provenance"):
        assert heading in md
    # the paper's Table 1 layout: one column per training-input condition plus their mean
    assert "| method | n | none | Gaussian | mean | Δ vs standard (pp) | paired t p |" in md
    assert re.search(r"\| dipnet \| 2 \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \|", md)
    assert "little power" in md  # 2 seeds: the low-power caveat is stated
    assert "command: `dipnet test`" in md and "torch" in md


def test_html_is_one_self_contained_page(report):
    _, paths = report
    page = paths.html.read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<table>" in page and "Compute cost" in page


def test_results_json_schema_and_numbers_match_the_runs(report):
    out, paths = report
    res = json.loads(paths.results_json.read_text())
    assert res["schema_version"] == 1 and res["baseline"] == "standard"
    assert {"runs", "aggregates", "paired_tests", "condition_means", "variances", "notes",
            "provenance", "sweep"} <= set(res)
    assert len(res["runs"]) == 8 and len(res["aggregates"]) == 4
    records, unfinished = load_runs(out)
    assert unfinished == []
    disk = {r.name: r.metrics["test_accuracy"] for r in records}
    # results.json rounds to 7 significant digits (float32 metrics carry no more)
    assert {row["run"]: row["test_accuracy"] for row in res["runs"]} == pytest.approx(
        disk, rel=1e-6)
    agg = next(a for a in res["aggregates"] if a["method"] == "dipnet"
               and a["train_perturbation"] == "gaussian")
    vals = [row["test_accuracy"] for row in res["runs"] if row["method"] == "dipnet"
            and row["train_perturbation"] == "gaussian"]
    assert agg["test_accuracy"]["n"] == 2
    assert agg["test_accuracy"]["mean"] == pytest.approx(sum(vals) / 2, abs=1e-6)
    assert agg["test_accuracy"]["std"] == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2),
                                                        abs=1e-6)
    t = next(t for t in res["paired_tests"] if t["method"] == "dipnet"
             and t["metric"] == "test_accuracy" and t["train_perturbation"] == "none")
    diffs = [row["test_accuracy"] for row in res["runs"] if row["method"] == "dipnet"
             and row["train_perturbation"] == "none"]
    base = [row["test_accuracy"] for row in res["runs"] if row["method"] == "standard"
            and row["train_perturbation"] == "none"]
    # (values in results.json are rounded to 7 significant digits)
    assert t["n"] == 2
    assert t["mean_diff"] == pytest.approx((sum(diffs) - sum(base)) / 2, abs=1e-6)
    cm = next(c for c in res["condition_means"] if c["method"] == "dipnet")
    assert cm["conditions"] == ["none", "gaussian"] and cm["vs_standard"]["n"] == 2
    assert res["variances"] and all(v["method"] == "dipnet" for v in res["variances"])


def test_results_csv_has_run_and_aggregate_rows(report):
    _, paths = report
    rows = list(csv.DictReader(paths.results_csv.open()))
    assert sum(r["row_type"] == "run" for r in rows) == 8
    assert sum(r["row_type"] == "aggregate" for r in rows) == 4
    assert {"test_accuracy", "test_accuracy_std", "time_per_epoch_s"} <= set(rows[0])


def test_report_rebuilds_from_disk_into_another_folder(report, tmp_path):
    out, first = report
    again = build_report(out, out_dir=tmp_path)
    a = json.loads(first.results_json.read_text())["aggregates"]
    assert json.loads(again.results_json.read_text())["aggregates"] == a


def test_flatten_evaluation_names_every_scalar():
    ev = {"clean": {"deterministic": {"accuracy": 0.9, "nll": 0.3}},
          "attacks": [{"attack": "pgd", "norm": "linf", "eps": 0.1,
                       "prediction": "deterministic", "accuracy": 0.5, "time_s": 3.0}],
          "corruptions": {"results": [{"corruption": "fog", "severity": 1, "accuracy": 0.7}],
                          "mean": 0.7},
          "ood": [{"in_dataset": "mnist", "out_dataset": "fashion_mnist", "score": "msp",
                   "auroc": 0.95}],
          "calibration": {"ece": 0.02}, "wall_clock_s": 10.0}
    flat = flatten_evaluation(ev)
    assert flat == {
        "clean/deterministic/accuracy": 0.9, "clean/deterministic/nll": 0.3,
        "attacks/pgd/linf/eps=0.1/deterministic/accuracy": 0.5,
        "corruptions/results/fog/severity=1/accuracy": 0.7, "corruptions/mean": 0.7,
        "ood/mnist/fashion_mnist/msp/auroc": 0.95, "calibration/ece": 0.02}
