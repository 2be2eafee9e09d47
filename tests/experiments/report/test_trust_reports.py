"""Reports say what they could not read (issue 17, section 3).

A corrupt evaluation.json or sweep.yaml is named in the report, never shown as "not evaluated";
a run of another data set or model in a compare folder is left out with a note naming it;
figure file names hold no absolute path; a data-set factory that raises or needs arguments is
one line; a tune rerun with other settings names them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dipnet.cli import main
from dipnet.errors import UserError
from dipnet.experiments.zoo.data import load_dataset
from dipnet.experiments.report import build_report
from report_synthetic import write_sweep


def _sweep(tmp_path: Path) -> Path:
    root = write_sweep(tmp_path / "sweep", lambda m, s, p: 0.8 + 0.01 * s, seeds=(0, 1),
                       evaluation=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump({"dataset": "mnist", "model": "mlp",
                                                     "methods": ["standard", "dipnet"]}))
    return root


def test_a_corrupt_evaluation_json_is_named_not_shown_as_not_evaluated(tmp_path):
    root = _sweep(tmp_path)
    bad = root / "runs" / "mnist-mlp-dipnet-none-s1"
    (bad / "evaluation.json").write_text("{not json")
    paths = build_report(root)
    text = paths.markdown.read_text()
    assert "mnist-mlp-dipnet-none-s1/evaluation.json" in text and "could not be read" in text
    row = next(r for r in paths.results["runs"] if r["run"] == "mnist-mlp-dipnet-none-s1")
    assert row["evaluated"] is False and row["evaluation_error"].startswith("not valid JSON")
    assert paths.results["unreadable_files"] == [
        "runs/mnist-mlp-dipnet-none-s1/evaluation.json (not valid JSON: Expecting property "
        "name enclosed in double quotes: line 1 column 2 (char 1))"]


def test_a_corrupt_sweep_yaml_is_named(tmp_path):
    root = _sweep(tmp_path)
    (root / "sweep.yaml").write_text("dataset: [unclosed\n")
    paths = build_report(root)
    text = paths.markdown.read_text()
    assert "sweep.yaml" in text and "could not be read" in text
    assert any(f.startswith("sweep.yaml (") for f in paths.results["unreadable_files"])


def test_a_run_of_another_data_set_or_model_is_left_out_with_a_note(tmp_path):
    root = _sweep(tmp_path)
    for name, field, value in (("stray-data", "dataset", "cifar10"),
                               ("stray-model", "model", "resnet8")):
        src = root / "runs" / "mnist-mlp-standard-none-s0"
        dst = root / "runs" / name
        dst.mkdir()
        metrics = json.loads((src / "metrics.json").read_text())
        metrics[field] = value
        (dst / "metrics.json").write_text(json.dumps(metrics))
        cfg = yaml.safe_load((src / "config.yaml").read_text())
        cfg[field] = value
        (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    paths = build_report(root)
    text = paths.markdown.read_text()
    assert "stray-data (cifar10 / mlp)" in text and "stray-model (mnist / resnet8)" in text
    assert "cifar10" not in "".join(line for line in text.splitlines()
                                    if line.startswith("## "))
    assert {r["run"] for r in paths.results["runs"]}.isdisjoint({"stray-data", "stray-model"})


def test_figure_file_names_hold_no_absolute_path(tmp_path):
    root = write_sweep(tmp_path / "sweep", lambda m, s, p: 0.8 + 0.01 * s, seeds=(0, 1))
    data = "/abs/folder/good.npz"
    for run in (root / "runs").iterdir():
        for name in ("metrics.json",):
            m = json.loads((run / name).read_text())
            m["dataset"] = data
            (run / name).write_text(json.dumps(m))
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["dataset"], cfg["model"] = data, "my.models:make"
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    paths = build_report(root)
    assert paths.figures
    for fig in paths.figures:
        rel = fig.relative_to(root / "figures")
        assert len(rel.parts) == 1 and "abs" not in fig.name and ":" not in fig.name, fig
    assert any("good.npz" in f.name for f in paths.figures)


# ---------------------------------------------------------------------- data factories
FACTORIES = '''
def needs_arguments(path):
    return {}

def raises():
    raise RuntimeError("the database is down")
'''


@pytest.mark.parametrize("ref,message", [
    ("badfactories:needs_arguments", r"needs arguments \(path\).*no arguments"),
    ("badfactories:raises", r"failed.*RuntimeError: the database is down"),
])
def test_a_data_factory_that_raises_or_needs_arguments_is_one_line(tmp_path, monkeypatch,
                                                                   capsys, ref, message):
    (tmp_path / "badfactories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "badfactories", raising=False)
    with pytest.raises(UserError, match=message) as info:
        load_dataset(ref)
    assert "\n" not in str(info.value)
    assert main(["train", "--dataset", ref, "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- tune
@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="needs optuna")
def test_a_tune_rerun_with_other_settings_names_them(tmp_path, capsys):
    base = ["tune", "--dataset", "digits", "--set", "model.hidden=[16]", "--method",
            "standard", "--budget", "1", "--batch-size", "64", "--quiet",
            "--out", str(tmp_path / "t")]
    assert main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--epochs", "2", "--seed", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "sweep.run.epochs: 1 vs 2" in err and "seed: 0 vs 4" in err, err
