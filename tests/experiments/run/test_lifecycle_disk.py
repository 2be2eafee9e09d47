"""Nothing lost, nothing half-done (issue 17, section 1).

- ``--overwrite`` is atomic: the old run is moved aside, deleted only once the new run has
  finished, and put back when the new run fails for any reason (a full disk, Ctrl-C).
- A full disk (ENOSPC) in train, compare, tune or evaluate is one line and leaves no temporary
  folder behind. It is injected where the bytes are written (safetensors, torch.save, the JSON
  writer), so the translation of each library's own error is what is tested.
- A refused plan leaves no files: the memory check for m and the tracker checks run before
  config.yaml or train.log are written.
- Trackers: refused at plan time when they can be checked; a failure during the run is one
  warning and the run finishes with all its results.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from dipnet._util import fileio
from dipnet.cli import main
from dipnet.experiments.run import checkpoint
from dipnet.experiments.run import train as train_module
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.run.train import run_training

# The finished run these tests damage, and the helpers of the lifecycle tests (pytest puts the
# tests folder on sys.path).
from test_lifecycle_run import DIGITS, finished, run_copy  # noqa: F401 (fixtures)
from test_lifecycle_run import _one_line as one_line
from test_lifecycle_run import _snapshot as snapshot

torch.set_num_threads(1)
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders anywhere under ``folder`` (the lock excepted)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*")
                  if p.name != ".lock")


# ---------------------------------------------------------------------- injected failures
def _fail_safetensors(monkeypatch, after: int = 0) -> None:
    """safetensors' own error for a full disk, from the (after+1)-th write on."""
    import safetensors.torch
    from safetensors import SafetensorError

    real, calls = safetensors.torch.save_file, []

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                                  'StorageFull, message: "No space left on device" })')
        return real(*args, **kwargs)
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def _fail_torch_save(monkeypatch) -> None:
    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")  # what a full disk leaves: part of a file
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", save)
    # torch's writer names no errno: a folder with no space left is what says it was ENOSPC
    monkeypatch.setattr(fileio, "_disk_full", lambda folder: True)


def _fail_json(monkeypatch, name: str) -> None:
    real = fileio.atomic_write_text

    def write(path, text):
        if Path(path).name == name:
            raise OSError(ENOSPC.errno, ENOSPC.strerror, str(path))
        return real(path, text)
    monkeypatch.setattr(fileio, "atomic_write_text", write)


FAILURES = {
    "checkpoint weights": lambda mp: _fail_safetensors(mp),
    "checkpoint state": _fail_torch_save,
    "final weights": lambda mp: _fail_safetensors(mp, after=1),  # epoch 1 saved, then full
    "metrics.json": lambda mp: _fail_json(mp, "metrics.json"),
    "checkpoint pointer": lambda mp: _fail_json(mp, "latest.json"),
}


# ---------------------------------------------------------------------- atomic --overwrite
@pytest.mark.parametrize("where", sorted(FAILURES))
def test_a_full_disk_during_overwrite_keeps_the_old_run(run_copy, capsys, monkeypatch, where):
    before = snapshot(run_copy)
    FAILURES[where](monkeypatch)
    code = main(["train", *DIGITS, "--method", "standard", "--seed", "3", "--overwrite",
                 "--out", str(run_copy)])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "No space left on device" in line, line
    assert snapshot(run_copy) == before  # the old metrics and model, byte for byte
    assert leftovers(run_copy) == []


def test_an_interrupted_overwrite_keeps_the_old_run(run_copy, monkeypatch):
    before = snapshot(run_copy)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save_checkpoint", interrupt)
    cfg = RunConfig.load(run_copy / "config.yaml")
    cfg.seed = 5
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, run_copy, overwrite=True, progress=False)
    assert snapshot(run_copy) == before and leftovers(run_copy) == []


def test_overwrite_deletes_the_old_run_only_once_the_new_one_finished(run_copy, monkeypatch):
    old_metrics = (run_copy / "metrics.json").read_bytes()
    seen: list[list[bytes]] = []
    real = checkpoint.save_checkpoint

    def spy(out, model, state):
        # During the new run the old result is still on disk, set aside in the folder.
        seen.append([p.read_bytes() for p in run_copy.glob(".previous-run-*/metrics.json")])
        assert not (run_copy / "metrics.json").exists()  # never mistaken for the new run's
        return real(out, model, state)
    monkeypatch.setattr(checkpoint, "save_checkpoint", spy)
    assert main(["train", *DIGITS, "--method", "standard", "--seed", "3", "--overwrite",
                 "--out", str(run_copy)]) == 0
    assert seen == [[old_metrics]]
    assert json.loads((run_copy / "metrics.json").read_text())["seed"] == 3
    assert leftovers(run_copy) == []


def test_an_overwrite_killed_midway_is_finished_or_replaced_later(run_copy, monkeypatch):
    # kill -9 during the new run leaves the old run set aside beside the new partial run: a
    # later --overwrite keeps the old run as the one to restore, and the run that finishes
    # drops it.
    old = snapshot(run_copy)
    cfg = RunConfig.load(run_copy / "config.yaml")
    cfg.seed, cfg.epochs = 5, 2

    def killed(out, model, state):
        raise SystemExit("kill -9")  # not restored by the handler: stands in for a hard kill
    monkeypatch.setattr(train_module, "restore_aside", lambda out, aside: None)
    monkeypatch.setattr(checkpoint, "save_checkpoint", killed)
    with pytest.raises(SystemExit):
        run_training(cfg, run_copy, overwrite=True, progress=False)
    monkeypatch.undo()
    (aside,) = run_copy.glob(".previous-run-*")
    assert snapshot(aside) == old
    _fail_json(monkeypatch, "metrics.json")
    with pytest.raises(OSError):
        run_training(cfg, run_copy, overwrite=True, progress=False)
    assert snapshot(run_copy) == old and leftovers(run_copy) == []


# ---------------------------------------------------------------------- full disk, fresh runs
@pytest.mark.parametrize("where", ["checkpoint weights", "checkpoint state", "final weights"])
def test_a_full_disk_in_a_new_run_is_one_line_and_leaves_no_temporary_files(
        tmp_path, capsys, monkeypatch, where):
    FAILURES[where](monkeypatch)
    out = tmp_path / "run"
    assert main(["train", *DIGITS, "--out", str(out)]) == 2
    assert "No space left on device" in one_line(capsys.readouterr().err)
    assert leftovers(out) == []


def test_a_full_disk_while_writing_train_log_is_one_line(tmp_path, capsys, monkeypatch):
    import logging

    def emit(self, record):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", self.baseFilename)
        except OSError:
            self.handleError(record)
    monkeypatch.setattr(logging.FileHandler, "emit", emit)
    assert main(["train", *DIGITS, "--out", str(tmp_path / "run")]) == 2
    assert "train.log: No space left on device" in one_line(capsys.readouterr().err)


def test_a_full_disk_in_evaluate_is_one_line(finished, tmp_path, capsys, monkeypatch):
    _fail_json(monkeypatch, "ev.json")
    out = tmp_path / "ev.json"
    assert main(["evaluate", str(finished), "--parts", "clean", "--set", "clean_points=50",
                 "--out", str(out), "--no-progress"]) == 2
    assert "No space left on device" in one_line(capsys.readouterr().err)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("command", [
    ["compare", "--methods", "standard", "--seeds", "1"],
    ["tune", "--method", "standard", "--budget", "1"],
])
def test_a_full_disk_in_compare_and_tune_is_one_line(tmp_path, capsys, monkeypatch, command):
    # A full disk fails every run of a sweep alike: it stops the command, not one run.
    if command[0] == "tune":
        pytest.importorskip("optuna")
    _fail_safetensors(monkeypatch)
    code = main([*command, "--dataset", "digits", "--epochs", "1", "--set",
                 "model.hidden=[16]", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "No space left on device" in one_line(capsys.readouterr().err)
    assert leftovers(tmp_path / "out") == []


# ---------------------------------------------------------------------- refused plans
def test_m_too_large_for_memory_is_one_line_at_plan_time_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *DIGITS, "--method", "dipnet", "--set", "dip.m=100000000",
                 "--out", str(out)])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "m=100000000" in line and "dip.m" in line, line
    assert not out.exists() or list(out.iterdir()) == []


def test_a_refused_plan_keeps_the_run_it_would_overwrite(run_copy, capsys):
    before = snapshot(run_copy)
    assert main(["train", *DIGITS, "--method", "dipnet", "--set", "dip.m=100000000",
                 "--overwrite", "--out", str(run_copy)]) == 2
    one_line(capsys.readouterr().err)
    assert snapshot(run_copy) == before and leftovers(run_copy) == []


# ---------------------------------------------------------------------- trackers
@pytest.fixture
def mlflow_env(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return monkeypatch


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9/", "file:///{tmp}/afile/mlruns"])
def test_a_tracker_that_cannot_start_is_refused_at_plan_time(tmp_path, capsys, mlflow_env, uri):
    (tmp_path / "afile").write_text("in the way")
    mlflow_env.setenv("MLFLOW_TRACKING_URI", uri.replace("/{tmp}", str(tmp_path)))
    out = tmp_path / "run"
    assert main(["train", *DIGITS, "--report-to", "mlflow", "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--report-to mlflow" in line, line
    assert not out.exists()


def test_a_tensorboard_folder_that_cannot_be_made_is_refused_at_plan_time(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("a file where the folder goes")
    assert main(["train", *DIGITS, "--report-to", "tensorboard", "--out", str(out)]) == 2
    assert "--report-to tensorboard" in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["tensorboard"]


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_tracker_failing_during_the_run_warns_once_and_the_run_finishes(
        tmp_path, capsys, monkeypatch, tracker):
    pytest.importorskip(tracker)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    if tracker == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        target = (SummaryWriter, "add_scalar")
    else:
        from mlflow.tracking import MlflowClient
        target = (MlflowClient, "log_batch")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "tracker store")
    monkeypatch.setattr(*target, broken)
    out = tmp_path / "runs" / "run"
    assert main(["train", *DIGITS, "--epochs", "2", "--report-to", tracker,
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"--report-to {tracker}" in warnings[0], err
    assert "Traceback" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and len(metrics["history"]) == 2
    assert (out / "model.safetensors").is_file()
