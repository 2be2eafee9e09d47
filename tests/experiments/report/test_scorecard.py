"""The scorecard at the top of every compare report: paired differences, Holm, direction."""

from __future__ import annotations

import math

import pytest

from dipnet.experiments.report import scorecard
from dipnet.experiments.report import build_report
from dipnet.experiments.report.stats import holm
from report_synthetic import write_sweep


def test_holm_matches_the_hand_computed_adjustment():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> 0.06
    out = holm([0.01, 0.04, 0.03, None, 0.005, math.nan])
    assert out[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert out[4] == pytest.approx(0.02)
    assert math.isnan(out[3]) and math.isnan(out[5])
    assert holm([0.9, 0.3]) == pytest.approx([0.9, 0.6])  # 0.3 x 2; 0.9 x 1
    assert holm([0.8, 0.7]) == [1.0, 1.0]  # 0.7 x 2 capped at 1; 0.8 stays monotone
    assert holm([]) == []


def _row(method, seed, pert, acc, ece, time=1.0):
    return {"dataset": "d", "model": "m", "method": method, "seed": seed,
            "train_perturbation": pert, "prediction": "deterministic", "test_accuracy": acc,
            "eval/calibration/deterministic/ece": ece, "train_time_per_epoch_s": time,
            "eval/attacks/pgd/linf/eps=0.1/deterministic/steps=10/accuracy": acc / 2,
            "eval/attacks/pgd/linf/eps=0.05/deterministic/steps=10/accuracy": acc - 0.1}


def _results(gain, ece_change, seeds=range(6), jitter=(0.001, -0.002, 0.0015, -0.001, 0.002,
                                                      -0.0015)):
    runs = []
    for s in seeds:
        runs.append(_row("standard", s, "none", 0.80 + 0.01 * s, 0.05))
        runs.append(_row("dipnet", s, "none", 0.80 + 0.01 * s + gain + jitter[s],
                         0.05 + ece_change + jitter[s] / 10, time=1.5))
    return {"runs": runs, "sweep": {"method_params": {}}}


def test_a_clear_gain_is_marked_better_and_lower_ece_counts_as_better():
    card = scorecard.build(_results(0.02, -0.01), "d", "m", "train_time_per_epoch_s")
    cells = {r["method"]: r["cells"] for r in card["rows"]}["dipnet"]
    assert cells["clean"]["mark"] == scorecard.BETTER
    assert cells["clean"]["mean_diff"] == pytest.approx(0.02, abs=1e-9)
    assert cells["ece"]["mark"] == scorecard.BETTER  # ECE fell
    assert cells["cost"]["ratio"] == pytest.approx(1.5)
    # The smallest eps > 0 of the run's own prediction.
    assert cells["pgd"]["mean_diff"] == pytest.approx(0.02, abs=1e-9)
    assert card["tests"] == 3  # clean, PGD, ECE (no perturbed condition, no corruptions)
    text = scorecard.markdown(card)
    assert "| **dipnet** | defaults | +2.00 [" in text and "1.50x" in text
    assert "corruptions acc" in text and "not measured" in text
    assert "Every method ran at its defaults" in text


def test_a_loss_is_marked_worse():
    card = scorecard.build(_results(-0.02, 0.01), "d", "m", "train_time_per_epoch_s")
    cells = {r["method"]: r["cells"] for r in card["rows"]}["dipnet"]
    assert cells["clean"]["mark"] == cells["ece"]["mark"] == scorecard.WORSE


def test_holm_removes_a_mark_that_one_test_alone_would_give():
    # Measured: with this jitter a 0.2-point gain has t-test p 0.035 alone (below 0.05);
    # clean and PGD share it, ECE has p 1, so Holm over the 3 tests gives 3 x 0.035 = 0.10.
    card = scorecard.build(_results(0.002, 0.0), "d", "m", "train_time_per_epoch_s")
    cell = {r["method"]: r["cells"] for r in card["rows"]}["dipnet"]["clean"]
    assert cell["t_p"] < 0.05 < cell["p_holm"]
    assert cell["mark"] == "" and not cell["significant"]


def test_two_seeds_can_never_be_significant_and_say_so():
    card = scorecard.build(_results(0.05, 0.0, seeds=range(2)), "d", "m",
                           "train_time_per_epoch_s")
    assert "no cell can be significant" in card["note"]


def test_settings_say_defaults_set_or_tuned():
    assert scorecard.method_settings({"method_params": {}}, "dipnet") == "defaults"
    assert scorecard.method_settings({"method_params": {"dipnet": {"init_scale": 0.3}}},
                                     "dipnet") == "set: init_scale=0.3"
    tuned = {"tuning": {"budget": 20, "methods": {"dipnet": {}}}, "method_params": {}}
    assert scorecard.method_settings(tuned, "dipnet") == "tuned"
    assert scorecard.method_settings(tuned, "standard") == "defaults"


def test_the_report_opens_with_the_scorecard(tmp_path):
    write_sweep(tmp_path, lambda m, s, p: 0.8 + 0.01 * s + 0.003 * (m == "dipnet"),
                methods=("standard", "dipnet"), evaluation=True)
    paths = build_report(tmp_path)
    text = paths.markdown.read_text()
    first_section = text.split("\n## ")[1]
    assert first_section.startswith("Scorecard (mnist / mlp)")
    assert "PGD L∞ acc" in first_section and "ECE" in first_section
    assert paths.results["scorecards"][0]["rows"][1]["method"] == "dipnet"


def test_a_compare_without_evaluation_says_robustness_was_not_measured(tmp_path, capsys):
    from dipnet.experiments.sweep.grid import SweepResult
    from dipnet.cli.sweep import _print_summary

    write_sweep(tmp_path / "plain", lambda m, s, p: 0.8 + 0.01 * s)
    _print_summary(build_report(tmp_path / "plain"), SweepResult(tmp_path / "plain"))
    printed = capsys.readouterr().out
    assert "Robustness was not measured" in printed and "--evaluate quick" in printed
    assert "| **dipnet** | defaults |" in printed  # the scorecard, robustness cells empty
    write_sweep(tmp_path / "evaluated", lambda m, s, p: 0.8 + 0.01 * s, evaluation=True)
    _print_summary(build_report(tmp_path / "evaluated"), SweepResult(tmp_path / "evaluated"))
    assert "Robustness was not measured" not in capsys.readouterr().out
