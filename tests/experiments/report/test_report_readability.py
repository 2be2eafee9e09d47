"""The report's figures read at a glance and its page stays short (issue: the attack panel's
overlapping red and pink lines, the cost legend's identical patches, broken axes where a full one
fits, a long table above the figures)."""

from __future__ import annotations

import re

import pytest

from dipnet.experiments.report import style as report_style
from dipnet.experiments.report import plots as report_plots
from dipnet.experiments.report import eval_figures as report_eval
from dipnet.experiments.report import build_report, markdown_to_html
from report_synthetic import evaluation_for, write_sweep

SHIPPED = ("standard", "dipnet", "sam", "rs", "input_noise", "dropout", "mixup", "cutmix",
           "cutout", "fixed_noise")


def _rgb(hex_colour: str) -> tuple[int, ...]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def test_dipnet_and_frozen_variances_are_told_apart_by_colour_and_marker():
    a, b = _rgb(report_style.method_colour("dipnet")), _rgb(report_style.method_colour(
        "fixed_noise"))
    # The old pair (#d62728 vs #f08e8e) differed by 178 in RGB distance but in lightness only;
    # require a different hue: the largest channel differs.
    assert a.index(max(a)) != b.index(max(b)) or abs(a[1] - b[1]) > 60
    markers = [report_style.method_marker(m) for m in SHIPPED]
    assert len(set(markers)) == len(markers)


def _capture(monkeypatch, module):
    figs = []

    def keep(fig, path):
        figs.append(fig)
        return path

    monkeypatch.setattr(module, "save_figure", keep)
    return figs


def test_the_attack_figure_adds_a_row_of_differences_from_standard(monkeypatch, tmp_path):
    figs = _capture(monkeypatch, report_eval)
    evs = {m: [evaluation_for(m, s, "none", 0.8 + 0.01 * i) for s in (0, 1)]
           for i, m in enumerate(("standard", "dipnet", "fixed_noise"))}
    report_eval.plot_attacks(evs, "t", tmp_path / "a.png", SHIPPED)
    axes = [ax for ax in figs[0].axes if ax.axison]
    assert len(axes) == 2  # one (attack, norm) panel in the synthetic evaluation, and its Δ row
    diff = axes[1]
    assert "Δ vs standard" in diff.get_ylabel()
    # fixed_noise sits 0.02 above standard (in %: 2 points, times (1 - 4 eps)) in the Δ row
    lines = {line.get_color(): line for line in diff.get_lines()}
    fixed = lines[report_style.method_colour("fixed_noise")].get_ydata()
    assert fixed[0] == pytest.approx(2.0)
    markers = {line.get_marker() for line in axes[0].get_lines() if line.get_marker() != "None"}
    assert {"o", "s", "D"} <= markers


def test_the_cost_legend_shows_each_condition_as_drawn(monkeypatch, tmp_path):
    figs = _capture(monkeypatch, report_plots)
    aggs = [{"train_perturbation": c, "method": m, "train_time_per_epoch_s": {"mean": t},
             "peak_memory_mb": {"mean": 100.0}}
            for c in ("none", "gaussian") for m, t in (("standard", 1.0), ("dipnet", 1.5))]
    report_plots.plot_cost(aggs, ["standard", "dipnet"], ["none", "gaussian"],
                           "train_time_per_epoch_s", "time", "t", tmp_path / "c.png")
    handles = figs[0].axes[0].get_legend().legend_handles
    assert [h.get_hatch() for h in handles] in ([None, "//"], ["", "//"])
    assert len({h.get_label() for h in handles}) == 2


def test_a_full_axis_where_it_fits_a_marked_broken_one_where_it_does_not():
    assert report_style.axis_floor(0.55, 1.0, 0.5) == 0.0     # AUROC 0.55-1: a full axis fits
    assert report_style.axis_floor(76.0, 82.0, 73.0) == 73.0  # accuracy 76-82 %: it would not
    assert report_style.axis_floor(0.0, 1.0, 0.0) == 0.0


def test_the_long_tables_sit_below_the_figures_collapsed(tmp_path):
    write_sweep(tmp_path, lambda m, s, p: 0.8 + 0.01 * s, evaluation=True)
    paths = build_report(tmp_path)
    md = paths.markdown.read_text()
    section = md[md.index("### Train input: none", md.index("## Test-time evaluation")):]
    first_figure = section.index("![")
    table = section.index("| metric |")
    assert first_figure < table
    assert section.rindex("<details><summary>", 0, table) > first_figure
    page = paths.html.read_text()
    assert page.count("<details><summary>") >= 3 and "&lt;details" not in page
    assert re.search(r"<details><summary>Every headline metric", page)


def test_only_the_details_form_becomes_html(tmp_path):
    page = markdown_to_html("<script>x</script>\n\n<details><summary>s</summary>\n\nbody\n\n"
                            "</details>\n", tmp_path, "t")
    assert "<script>" not in page and "<details><summary>s</summary>" in page
