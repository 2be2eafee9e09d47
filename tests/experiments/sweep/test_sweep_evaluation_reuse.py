"""A sweep reuses a run's evaluation.json only when it was made with the settings asked for now:
changing the evaluation settings between two invocations must not mix two protocols in one
report (found when the ViT study's evaluation was rerun with a trimmed suite and the three
standard runs kept their earlier, larger one)."""

from __future__ import annotations

import json

from dipnet.evaluation.settings import get_settings
from dipnet.experiments.sweep.grid import evaluation_is_current


def _write(run_dir, suite, settings):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "evaluation.json").write_text(json.dumps({"suite": suite,
                                                          "settings": settings.to_dict()}))


def test_an_evaluation_with_other_settings_is_not_current(tmp_path):
    asked = get_settings("quick", attack_points=200, parts=("clean", "attacks"))
    _write(tmp_path / "same", "quick", asked)
    _write(tmp_path / "other", "quick", get_settings("quick", attack_points=300))
    _write(tmp_path / "suite", "full", asked)
    assert evaluation_is_current(tmp_path / "same", "quick", asked)
    assert not evaluation_is_current(tmp_path / "other", "quick", asked)
    assert not evaluation_is_current(tmp_path / "suite", "quick", asked)
    assert not evaluation_is_current(tmp_path / "missing", "quick", asked)


def test_an_unreadable_evaluation_is_not_current(tmp_path):
    (tmp_path / "evaluation.json").write_text("{not json")
    assert not evaluation_is_current(tmp_path, "quick", get_settings("quick"))
