"""Figures and tables of the report on a synthetic sweep with evaluations: one colour per method
in every figure, page-width figures, marked truncated axes, readable headline names in %, the
forest plot, reliability diagrams and accuracy against test-time noise."""

from __future__ import annotations

import os

import pytest

from dipnet.experiments.report import style as report_style
from dipnet.experiments.report import plots as report_plots
from dipnet.experiments.report import build_report, build_results, load_runs
from dipnet.experiments.report.build import _forest_panels
from dipnet.experiments.report.eval_figures import noise_source, readable_metric
from report_synthetic import evaluation_for, write_sweep

PIL = pytest.importorskip("PIL.Image")

SHIPPED = ("standard", "dipnet", "sam", "rs", "input_noise", "dropout", "mixup", "cutmix",
           "cutout", "fixed_noise")
# Six methods keep the fixture fast (about 5 s) while every figure still has many series.
METHODS = ("standard", "dipnet", "sam", "rs", "mixup", "fixed_noise")
BASE = {0: 0.80, 1: 0.81, 2: 0.79}
GAIN = {0: 0.004, 1: 0.007, 2: 0.005}


def _acc(method: str, seed: int, pert: str) -> float:
    return BASE[seed] + 0.003 * METHODS.index(method) + GAIN[seed] * (method == "dipnet")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Six methods, two conditions, evaluations with four OOD panels (the layout that made a
    2541 px wide OOD figure with nine methods; the panels now wrap whatever the count)."""
    root = tmp_path_factory.mktemp("big")
    write_sweep(root, _acc, methods=METHODS, perts=("none",), evaluation=True)
    return build_report(root)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _has_colour(path, rgb, min_pixels: int = 4) -> bool:
    """At least ``min_pixels`` pixels of exactly this colour (line and marker centres are not
    anti-aliased, so a drawn series always has some)."""
    import numpy as np
    with PIL.open(path) as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
    return int((px == np.array(rgb)).all(axis=1).sum()) >= min_pixels


def test_method_colours_are_fixed_by_name():
    assert report_style.method_colour("dipnet") == "#d62728"
    assert report_style.method_colour("standard") != report_style.method_colour("dipnet")
    known = [report_style.method_colour(m) for m in SHIPPED]
    assert len(set(known)) == len(known)  # no two shipped methods share a colour
    # A method the report does not know gets the same colour in every process (the report of
    # one sweep is drawn by several): no Python hash(), whose seed changes per process.
    import subprocess
    import sys

    code = ("from dipnet.experiments.report import style as report_style; "
            "print(report_style.method_colour('my_method'))")
    colours = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": seed}
                              ).stdout.strip() for seed in ("1", "2")}
    assert colours == {report_style.method_colour("my_method")}
    assert report_style.method_colour("my_method") in report_style._PALETTE


def test_dipnet_has_its_colour_in_every_per_method_figure(big):
    red = _rgb(report_style.method_colour("dipnet"))
    per_method = [p for p in big.figures if p.name.split("_")[0] in
                  ("accuracy", "forest", "curves", "cost")
                  or p.name.startswith(("eval_attacks", "eval_noise", "eval_reliability",
                                        "eval_ece", "eval_ood", "eval_smoothness"))]
    assert len(per_method) == 9
    for p in per_method:
        assert _has_colour(p, red), f"{p.name} does not draw dipnet in {red}"


def test_every_figure_fits_the_page(big):
    for p in big.figures:
        with PIL.open(p) as im:
            assert im.width <= report_style.MAX_FIGURE_WIDTH_PX, (p.name, im.size)


def test_truncated_accuracy_axis_is_marked(monkeypatch, tmp_path):
    seen = []
    real = report_plots.mark_truncated_axis

    def spy(ax, unit=""):
        real(ax, unit)
        seen.append((ax.get_ylim()[0], ax.get_ylabel()))

    monkeypatch.setattr(report_plots, "mark_truncated_axis", spy)
    aggs = [{"train_perturbation": "none", "method": m,
             "test_accuracy": {"mean": 0.8 + 0.01 * i, "std": 0.01}}
            for i, m in enumerate(("standard", "dipnet"))]
    report_plots.plot_accuracy(aggs, ["standard", "dipnet"], ["none"], "t", tmp_path / "a.png")
    assert seen and seen[0][0] > 0 and "axis starts at" in seen[0][1]


def test_headline_table_is_readable_and_in_percent(big):
    md = big.markdown.read_text()
    section = md[md.index("## Test-time evaluation"):]
    table = section[section.index("| metric |"):]
    table = table[:table.index("\n\n")]
    assert "`clean/" not in table and "eval/" not in table
    row = next(r for r in table.splitlines() if r.startswith("| clean accuracy (%), "
                                                             "deterministic |"))
    assert "| 80.00 ± 1.00 |" in row  # standard: 0.80 / 0.81 / 0.79 shown in %
    assert "| PGD L∞ ε=0.05 accuracy (%), deterministic |" in table
    assert "OOD AUROC (%) mnist vs fashion_mnist, score msp, deterministic" in table


def test_readable_metric_names():
    assert readable_metric("clean/sampled/accuracy") == ("clean accuracy (%), sampled", 100.0)
    assert readable_metric("calibration/deterministic/ece")[1] == 100.0
    assert readable_metric("smoothness/sampled/loss_grad_norm/mean") == (
        "input-gradient norm of the loss, sampled", 1.0)
    assert readable_metric("something/else") == ("something/else", 1.0)


def test_forest_plot_and_confidence_intervals(big, tmp_path):
    assert any(p.name == "forest_mnist_mlp.png" for p in big.figures)
    assert "95% CI of Δ (pp)" in big.markdown.read_text()
    # two conditions: a panel each plus the mean over conditions (numbers only, no drawing)
    write_sweep(tmp_path, _acc, methods=("standard", "dipnet"), perts=("none", "gaussian"))
    res = build_results(load_runs(tmp_path)[0])
    t = next(t for t in res["paired_tests"] if t["method"] == "dipnet"
             and t["metric"] == "test_accuracy" and t["train_perturbation"] == "none")
    # differences 0.7, 1.0, 0.8 pp: mean 0.8333, sd 0.1528, t_{0.975,2} = 4.302653
    half = 4.302653 * 0.152753 / 3 ** 0.5
    assert (100 * t["ci_low"], 100 * t["ci_high"]) == pytest.approx(
        (0.833333 - half, 0.833333 + half), abs=1e-4)
    panels = _forest_panels(res, "mnist", "mlp")
    assert [title for title, _ in panels] == ["train input: none", "train input: Gaussian",
                                              "mean over conditions"]
    assert all(len(tests) == 1 and tests[0]["method"] == "dipnet" for _, tests in panels)


def test_reliability_and_noise_figures_or_a_note(big, tmp_path):
    names = {p.name for p in big.figures}
    assert {"eval_reliability_mnist_mlp_none.png", "eval_noise_mnist_mlp_none.png"} <= names
    # without reliability bins the report says what is missing instead of drawing nothing
    write_sweep(tmp_path, _acc, methods=("standard", "dipnet"), seeds=(0, 1), evaluation=True,
                reliability=False, variance_layout=None)
    paths = build_report(tmp_path)
    assert not any(p.name.startswith("eval_reliability") for p in paths.figures)
    assert "calibration.PREDICTION.reliability" in paths.markdown.read_text()


def test_noise_source_prefers_a_sigma_sweep():
    ev = evaluation_for("standard", 0, "none", 0.8)
    assert noise_source({"standard": [ev]}) == "corruption"
    ev["gaussian_noise"] = [{"sigma": 0.1, "prediction": "deterministic", "accuracy": 0.7}]
    assert noise_source({"standard": [ev]}) == "sigma"
    assert noise_source({"standard": [evaluation_for("standard", 0, "none", 0.8,
                                                     noise_sweep=False)]}) is None


def test_curves_compare_dipnet_nll_with_the_others_loss():
    assert report_plots._data_term({"train_loss": 5.0, "train_nll": 0.5}) == 0.5
    assert report_plots._data_term({"train_loss": 0.7}) == 0.7
