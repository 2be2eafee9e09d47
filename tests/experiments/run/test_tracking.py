"""Experiment tracking (issue 11): ``--report-to tensorboard|mlflow|none`` for train and compare.

A 1-epoch digits run writes a TensorBoard event file and an MLflow file-store run holding the
per-epoch metrics, the loss parts and the per-layer variances; the values equal metrics.json's
history. A missing tracker package stops the run at its plan, before anything is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dipnet.cli import main
from dipnet.experiments.run.tracking import final_scalars, scalars

ARGS = ["train", "--dataset", "digits", "--set", "model.hidden=[16]", "--method", "dipnet",
        "--epochs", "1", "--batch-size", "64", "--threads", "1", "--mc-samples", "2",
        "--no-progress"]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # restored after the module
    out = tmp_path_factory.mktemp("track") / "runs" / "run"
    try:
        assert main([*ARGS, "--report-to", "tensorboard,mlflow", "--out", str(out)]) == 0
        yield out
    finally:
        mp.undo()


def _history(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_scalars_flatten_a_history_row():
    row = {"epoch": 3, "lr": 0.1, "train_loss": 1.5, "train_nll": 1.2, "val_accuracy": 0.9,
           "variance_mean": {"0": 0.01}, "variance": {"0": {"mean": 0.01, "max": 0.02}},
           "note": "text", "flag": True, "bad": float("nan")}
    assert scalars(row) == {"lr": 0.1, "train/loss": 1.5, "train/nll": 1.2,
                            "val/accuracy": 0.9, "variance/0/mean": 0.01,
                            "variance/0/max": 0.02}
    assert final_scalars({"test_accuracy": 0.9, "test_accuracy_mc": None}) == {
        "test/accuracy": 0.9}


def test_tensorboard_event_file_holds_the_epoch_metrics(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tracked_run / "tensorboard"
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    row = _history(tracked_run)["history"][0]
    layers = list(row["variance"])
    assert layers, "a dipnet run records per-layer variances"
    expected = {"train/loss", "train/accuracy", "train/nll", "train/barrier", "train/stability",
                "val/loss", "val/accuracy", "lr", "test/accuracy", "test/loss",
                *(f"variance/{layer}/mean" for layer in layers)}
    assert expected <= tags, expected - tags
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [1]
    assert events[0].value == pytest.approx(row["train_loss"], rel=1e-6)  # float32 in the file
    assert acc.Scalars(f"variance/{layers[0]}/mean")[0].value == pytest.approx(
        row["variance"][layers[0]]["mean"], rel=1e-6)


def test_mlflow_file_store_run_holds_the_epoch_metrics(tracked_run):
    from mlflow.tracking import MlflowClient

    store = tracked_run.parent / "mlruns"  # beside the run folder: shared by a sweep's runs
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("dipnet")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    metrics = _history(tracked_run)
    assert run.info.run_name == "digits-mlp-dipnet-none-s0" and run.info.status == "FINISHED"
    assert run.data.params["method"] == "dipnet" and run.data.params["epochs"] == "1"
    history = client.get_metric_history(run.info.run_id, "train/barrier")
    assert [(m.step, m.value) for m in history] == [
        (1, pytest.approx(metrics["history"][0]["train_barrier"]))]
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert json.loads((tracked_run / "tracking.json").read_text())["mlflow_run_id"] == \
        run.info.run_id


def test_a_run_started_again_clears_its_old_tracking(tracked_run):
    assert main([*ARGS, "--report-to", "tensorboard", "--overwrite", "--out",
                 str(tracked_run)]) == 0
    assert len(list((tracked_run / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_missing_tracker_package_stops_the_plan(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert main([*ARGS, "--report-to", "mlflow", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'dipnet[track]'" in err, err
    assert not (tmp_path / "x").exists()


def test_an_unknown_tracker_is_one_line(tmp_path, capsys):
    assert main([*ARGS, "--report-to", "wandb", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'wandb'" in err and "tensorboard" in err, err
