"""The lifecycle of one run (`dipnet train`, `run_training`): validate, lock, then act.

Issue 9, items 1, 2, 5, 8 and 9 (part): a finished run is reused only with the same settings;
a damaged one is refused; nothing on disk changes before every setting is checked, the data is
found and the model is built; load_run works without the data; bad `--out` folders and OS
errors are one line; options that do not apply are errors.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from dipnet.cli import main
from dipnet.errors import UserError
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.run.runs import load_run
from dipnet.experiments.run.train import run_training

torch.set_num_threads(1)
BASE = ["--model", "mlp", "--model-param", "hidden=[16]", "--epochs", "1", "--batch-size", "64",
        "--threads", "1", "--mc-samples", "2", "--no-progress"]
DIGITS = ["--dataset", "digits", *BASE]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (bar the lock file) and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished dipnet run on digits, seed 0, written by the command line."""
    out = tmp_path_factory.mktemp("life") / "run"
    assert main(["train", *DIGITS, "--method", "dipnet", "--seed", "0", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run that a test may damage."""
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def test_finished_run_with_other_settings_is_refused_naming_the_fields(run_copy, capsys):
    before = _snapshot(run_copy)
    code = main(["train", *DIGITS, "--method", "standard", "--seed", "7", "--out", str(run_copy)])
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert code == 2
    assert "method: 'dipnet' vs 'standard'" in line and "seed: 0 vs 7" in line
    assert "--overwrite" in line and "--out" in line
    assert "test accuracy" not in out  # the old run's number is not passed off as this one's
    assert _snapshot(run_copy) == before


def test_same_settings_reuse_the_finished_run_in_one_line(run_copy, capsys):
    metrics = json.loads((run_copy / "metrics.json").read_text())
    before = _snapshot(run_copy)
    assert main(["train", *DIGITS, "--method", "dipnet", "--seed", "0", "--out",
                 str(run_copy)]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "already finished" in out
    assert f"{metrics['test_accuracy']:.4f}" in out
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("name, damage", [
    ("config.yaml", "method: [unclosed\n"),        # not YAML
    ("config.yaml", "colour: red\n"),              # YAML, but not a run config
    ("metrics.json", "{\"status\": \"fini"),        # truncated JSON
])
def test_a_damaged_finished_run_is_refused_never_reused(run_copy, capsys, name, damage):
    (run_copy / name).write_text(damage)
    before = _snapshot(run_copy)
    code = main(["train", *DIGITS, "--method", "dipnet", "--seed", "0", "--out", str(run_copy)])
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert code == 2 and name in line and "--overwrite" in line
    assert "test accuracy" not in out
    assert _snapshot(run_copy) == before
    # the Python API refuses too
    with pytest.raises(UserError, match=name.replace(".", r"\.")):
        run_training(RunConfig(method="dipnet", dataset="digits", model="mlp",
                               model_params={"hidden": [16]}, epochs=1, batch_size=64,
                               mc_samples=2), run_copy, progress=False)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist", "--model", "mlp", "--data-dir", "{copy}/nowhere"], "not found"),
    (["--dataset", "digits", "--model", "resnet", "--model-param", "depth=10"], "depth"),
])
def test_overwrite_changes_nothing_until_data_and_model_are_ready(run_copy, capsys, argv,
                                                                  message):
    before = _snapshot(run_copy)
    argv = [a.replace("{copy}", str(run_copy)) for a in argv]
    code = main(["train", *argv, "--epochs", "1", "--threads", "1", "--no-progress",
                 "--overwrite", "--out", str(run_copy)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and message in line
    assert _snapshot(run_copy) == before  # the old results survive a rejected --overwrite


def test_overwrite_really_replaces_once_everything_is_ready(run_copy, capsys):
    old = json.loads((run_copy / "metrics.json").read_text())
    assert main(["train", *DIGITS, "--method", "standard", "--seed", "3", "--overwrite",
                 "--out", str(run_copy)]) == 0
    new = json.loads((run_copy / "metrics.json").read_text())
    assert (old["method"], old["seed"]) == ("dipnet", 0)
    assert (new["method"], new["seed"]) == ("standard", 3)
    assert RunConfig.load(run_copy / "config.yaml").method == "standard"
    assert not (run_copy / ".lock").exists()  # the lock is released and tidied away


def test_load_run_without_the_data(finished):
    light = load_run(finished, load_data=False)
    assert light.data is None
    assert light.metrics["input_shape"] == [1, 8, 8] and light.metrics["num_classes"] == 10
    full = load_run(finished)
    x = full.data.test.x[:32]
    with torch.no_grad():
        assert torch.equal(light.method.predictive_probs(light.model, x),
                           full.method.predictive_probs(full.model, x))


@pytest.mark.parametrize("where", ["afile", "afile/sub"])
def test_out_at_or_under_a_file_is_one_line(tmp_path, capsys, where):
    (tmp_path / "afile").write_text("keep me")
    code = main(["train", *DIGITS, "--out", str(tmp_path / where)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "--out" in line and str(tmp_path / "afile") in line
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device", "/data/runs/x/config.yaml"),
    PermissionError(errno.EACCES, "Permission denied", "/data/runs/x/config.yaml"),
    OSError(errno.EROFS, "Read-only file system", "/data/runs/x/config.yaml"),
])
def test_os_errors_are_one_line_naming_the_path_and_the_errno_text(tmp_path, capsys,
                                                                  monkeypatch, exc):
    def fail(self, path):
        raise exc
    monkeypatch.setattr(RunConfig, "save", fail)
    code = main(["train", *DIGITS, "--out", str(tmp_path / "x")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and exc.strerror in line and "/data/runs/x/config.yaml" in line


def test_evaluate_out_under_a_file_is_one_line(finished, tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    code = main(["evaluate", str(finished), "--parts", "clean", "--no-progress",
                 "--out", str(tmp_path / "afile" / "x.json")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "afile" in line


@pytest.mark.parametrize("argv, fragments", [
    (["--method", "standard", "--dip", "m=2"], ["dip", "dipnet", "'standard'"]),
    (["--method", "standard", "--param", "sigma=0.3"], ["sigma", "'standard'", "rs",
                                                        "input_noise", "--param"]),
    (["--perturbation-strength", "0.3"], ["perturbation_strength", "gaussian", "fgsm"]),
    (["--perturbation-mode", "fixed"], ["perturbation_mode", "gaussian", "fgsm"]),
])
def test_options_that_do_not_apply_are_errors(tmp_path, capsys, argv, fragments):
    code = main(["train", *DIGITS, *argv, "--out", str(tmp_path / "x")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not (tmp_path / "x").exists()
