"""Learned-variance section of the report, on synthetic metrics.json files: trajectories from
the initial value, the legacy layout, verdict numbers computed by hand, figures and skipping."""

from __future__ import annotations

import json
import math

import pytest

from dipnet.experiments.report import variance as rv
from dipnet.experiments.report import build_report
from report_synthetic import metrics_for, write_sweep


def test_trajectory_starts_at_the_initial_value():
    run = rv.read_variance_run("dipnet", 0, metrics_for("dipnet", 0, "none", 0.8))
    assert run is not None and run.layout == "full"
    assert run.epochs == [0, 1, 2, 3] and run.layers == ["0", "2", "4"]
    for la in run.layers:
        assert run.mean[la][0] == run.init[la] == 0.01
        assert run.q05[la][0] == run.q95[la][0] == 0.01
    # synthetic growth: mean = 0.01 * (1 + 0.05 * scale * epoch), scale 9 for layer "4"
    assert run.mean["4"][3] == pytest.approx(0.01 * (1 + 0.05 * 9 * 3))
    assert run.grad_data["0"] and run.hist["2"]["counts"]


def test_verdict_numbers_by_hand():
    v = rv.verdict(rv.read_variance_run("dipnet", 0, metrics_for("dipnet", 0, "none", 0.8)))
    # final relative changes 0.15, 0.45, 1.35 (scales 1, 3, 9 after 3 epochs at 5%)
    assert v["moved"] == pytest.approx((0.15 + 0.45 + 1.35) / 3)
    assert v["moved_max_layer"] == "4" and v["moved_max"] == pytest.approx(1.35)
    assert v["layer_factor"] == pytest.approx(0.0235 / 0.0115)
    assert v["feature_factor"] == pytest.approx(1.6 / 0.6)  # q95 / q05 of the synthetic run
    assert v["learned"] is True
    line = rv.verdict_line(rv.read_variance_run("dipnet", 0, metrics_for("dipnet", 0, "none",
                                                                         0.8)), "run")
    # The profile across layers and features, not a percentage moved.
    assert "across layers from 0.0115 (`0`) to 0.0235 (`4`), a factor 2.04 (at the start " \
        "1.00)" in line
    assert "features within a layer spread by up to 2.67x" in line
    assert "layer means ended at 1.15x to 2.35x their start" in line
    assert "learned a profile" in line and "moved by" not in line


def test_frozen_variances_at_a_relative_start_never_learned_a_profile():
    # fixed_noise with the relative start: each layer calibrated to its own value (a factor 9
    # between layers), then frozen: 0.0 % moved, features equal.
    m = metrics_for("dipnet", 0, "none", 0.8)
    starts = {"0": 0.09, "2": 0.03, "4": 0.01}
    m["variance_init"] = starts
    for h in m["history"]:
        for la, st in h["variance"].items():
            for k in ("mean", "min", "max", "q05", "q25", "q50", "q75", "q95"):
                st[k] = starts[la]
            st["init"], st["rel_change"] = starts[la], 0.0
    run = rv.read_variance_run("fixed_noise", 0, m)
    v = rv.verdict(run)
    assert v["moved"] == 0.0 and v["layer_factor"] == pytest.approx(9.0)
    assert v["learned"] is False
    line = rv.verdict_line(run, "run")
    assert "learned a profile" not in line
    assert "stayed at their start (moved 0.0% on average)" in line
    assert "layers differ by a factor 9.00 because the start did" in line


def test_a_run_that_barely_moved_says_so():
    m = metrics_for("dipnet", 0, "none", 0.8)
    for h in m["history"]:  # every statistic within 1% of init
        for s in h["variance"].values():
            for k in ("mean", "min", "max", "q05", "q25", "q50", "q75", "q95"):
                s[k] = 0.01 * 1.01
            s["rel_change"] = 0.01
    run = rv.read_variance_run("dipnet", 0, m)
    assert rv.verdict(run)["learned"] is False
    assert "barely moved" in rv.verdict_line(run, "run")


def test_legacy_layout_takes_init_from_the_setting_and_others_are_skipped():
    m = metrics_for("dipnet", 0, "none", 0.8, variance_layout="legacy")
    # nothing records the initial value: unknown (NaN), not guessed
    assert math.isnan(rv.read_variance_run("dipnet", 0, m).init["0"])
    m["method_params"] = {"init_variance": 0.02}
    run = rv.read_variance_run("dipnet", 0, m)
    assert run.layout == "legacy" and run.q05 is None and not run.grad_data
    assert run.mean["4"][0] == 0.02 and run.epochs[0] == 0
    assert run.rel_change["4"] == pytest.approx(abs(0.01 * (1 + 0.05 * 9 * 3) / 0.02 - 1))
    assert math.isnan(rv.verdict(run)["feature_factor"])  # no per-feature quantiles
    assert rv.read_variance_run("standard", 0, metrics_for("standard", 0, "none", 0.8)) is None


def test_report_variance_section_figures_and_verdicts(tmp_path):
    write_sweep(tmp_path, lambda m, s, p: 0.8 + 0.01 * s)
    paths = build_report(tmp_path)
    names = {p.name for p in paths.figures}
    for kind in ("trajectory", "histogram", "gradient"):
        assert f"variance_{kind}_mnist_mlp_none.png" in names
    md = paths.markdown.read_text()
    assert md.count("a factor 2.04 (at the start 1.00)") == 3  # one per seed
    res = json.loads(paths.results_json.read_text())
    v = res["variance_verdicts"]
    assert len(v) == 3 and all(x["method"] == "dipnet" and x["learned"] for x in v)
    assert math.isclose(v[0]["moved"], 0.65, rel_tol=1e-6)


def test_legacy_sweep_draws_the_trajectory_only_and_says_why(tmp_path):
    write_sweep(tmp_path, lambda m, s, p: 0.8, variance_layout="legacy")
    paths = build_report(tmp_path)
    names = {p.name for p in paths.figures}
    assert "variance_trajectory_mnist_mlp_none.png" in names
    assert not any(n.startswith(("variance_histogram", "variance_gradient")) for n in names)
    assert "recorded only the per-layer mean" in paths.markdown.read_text()


def test_no_variances_no_section(tmp_path):
    write_sweep(tmp_path, lambda m, s, p: 0.8, variance_layout=None)
    paths = build_report(tmp_path)
    assert "## Learned variance" not in paths.markdown.read_text()
    assert not any(p.name.startswith("variance_") for p in paths.figures)
