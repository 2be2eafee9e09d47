"""The sweep report takes the evaluation tables without drawing the evaluation's figures.

Issue 21: `experiments.report` rendered the evaluation section into a temporary folder (every
figure drawn) and then deleted the figure links, while `report_eval` drew its own figures
again. `render_section(evaluations, None)` now gives the tables alone; these tests check that
they are exactly the tables of the drawn section.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from report_synthetic import evaluation_for

pytest.importorskip("matplotlib")


def _evaluations() -> dict[str, list[dict]]:
    return {m: [evaluation_for(m, seed, "none", acc + 0.01 * seed) for seed in range(3)]
            for m, acc in (("standard", 0.9), ("dipnet", 0.88))}


def test_the_tables_alone_are_the_drawn_section_without_its_figures(tmp_path: Path) -> None:
    from dipnet.experiments.report.eval_tables import render_section

    evs = _evaluations()
    drawn = render_section(evs, tmp_path / "figures")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir())  # figures were drawn
    tables = render_section(evs, None)
    without_figures = [line for line in drawn.splitlines() if not line.lstrip().startswith("![")]
    # Each figure link stood in its own paragraph: dropping it leaves two blank lines.
    assert tables.splitlines() == _single_blank(without_figures)
    assert "![" not in tables and "#### Clean accuracy" in tables


def test_the_sweep_report_draws_no_evaluation_figure_for_its_tables(tmp_path: Path,
                                                                    monkeypatch) -> None:
    from dipnet.experiments.report import eval_tables as evaluation_report
    from dipnet.experiments.report import build as report

    seen: list[object] = []
    real = evaluation_report.render_section
    monkeypatch.setattr(evaluation_report, "render_section",
                        lambda evs, out_dir: seen.append(out_dir) or real(evs, out_dir))
    text = report._eval_tables(_evaluations())
    assert seen == [None] and "#### Clean accuracy" in text and "![" not in text


def _single_blank(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return out
