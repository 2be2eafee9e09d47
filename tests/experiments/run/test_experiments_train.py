"""run_training end to end on real digits: files, metrics, reuse, determinism, load_run, the
`dipnet train` command line and its errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from dipnet.cli import main
from dipnet.errors import UserError
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.run.runs import load_run
from dipnet.experiments.run.train import run_training

torch.set_num_threads(1)
FAST = dict(dataset="digits", model="mlp", model_params={"hidden": [64]}, epochs=4,
            batch_size=64, lr=3e-3, num_threads=1)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished dipnet run (shared by the tests that only read it)."""
    out = tmp_path_factory.mktemp("runs") / "dip"
    cfg = RunConfig(method="dipnet", seed=1, **FAST)
    return cfg, out, run_training(cfg, out, progress=False)


def test_run_writes_every_result_file(finished):
    cfg, out, metrics = finished
    for name in ("config.yaml", "metrics.json", "train.log", "model.safetensors",
                 "checkpoint/latest.json"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test_accuracy"] == metrics["test_accuracy"]
    assert RunConfig.load(out / "config.yaml") == cfg  # re-runnable with --config
    assert "epoch 4/4" in (out / "train.log").read_text()


def test_metrics_hold_what_the_report_needs(finished):
    cfg, out, m = finished
    for key in ("test_accuracy", "val_accuracy", "val_accuracy_best", "history", "wall_clock_s",
                "time_per_epoch_s", "peak_memory_mb", "num_params", "extra_params",
                "variances", "method", "dataset", "model", "seed", "train_perturbation",
                "torch_version", "hardware", "command"):
        assert key in m, key
    assert m["status"] == "finished" and m["method"] == "dipnet" and m["seed"] == 1
    # an MLP on digits reaches ~0.9 in 4 epochs; 0.8 leaves room for seeds, chance is 0.1
    assert m["test_accuracy"] > 0.8
    assert len(m["history"]) == 4
    row = m["history"][-1]
    for key in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "epoch_time_s", "train_nll", "train_barrier", "variance_mean"):
        assert key in row, key
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    assert m["extra_params"] == 64 + 64 and m["num_params"] == 64 * 64 + 64 + 64 * 10 + 10
    assert set(m["variances"]) == {"features.1", "head"}
    assert m["peak_memory_mb"] > 50  # a python process with torch is never smaller


def test_finished_run_is_reused_not_retrained(finished, capsys):
    cfg, out, metrics = finished
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    again = run_training(cfg, out, progress=False)
    assert again == json.loads((out / "metrics.json").read_text())
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert "reusing it" in capsys.readouterr().err


def test_a_folder_holding_another_run_is_refused(finished):
    cfg, out, _ = finished
    other = RunConfig.from_dict({**cfg.to_dict(), "lr": 0.5})
    with pytest.raises(UserError, match="holds a different run .*lr"):
        run_training(other, out, progress=False)


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    cfg = RunConfig(method="standard", seed=5, **{**FAST, "epochs": 2})
    a = run_training(cfg, tmp_path / "a", progress=False)
    b = run_training(cfg, tmp_path / "b", progress=False)
    c = run_training(RunConfig.from_dict({**cfg.to_dict(), "seed": 6}), tmp_path / "c",
                     progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if "time" not in k} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert strip(a["history"]) != strip(c["history"])
    # overwrite really retrains (same numbers, new files)
    d = run_training(cfg, tmp_path / "a", overwrite=True, progress=False)
    assert strip(d["history"]) == strip(a["history"])


def test_without_validation_split_and_with_capped_validation(tmp_path):
    cfg = RunConfig(method="rs", val_fraction=0.0, **{**FAST, "epochs": 1})
    m = run_training(cfg, tmp_path / "noval", progress=False)
    assert m["val_accuracy"] is None and "val_accuracy" not in m["history"][0]
    # rs predicts by sampling: its test accuracy IS the Monte Carlo one
    assert m["prediction"] == "sampled" and m["test_accuracy"] == m["test_accuracy_mc"]
    m = run_training(RunConfig(max_val=50, **{**FAST, "epochs": 1}), tmp_path / "cap",
                     progress=False)
    assert m["num_val"] == 50 and m["val_accuracy"] is not None
    # --no-eval-mc: no Monte Carlo pass for a deterministic predictor that could sample
    m = run_training(RunConfig(method="dipnet", eval_mc=False, **{**FAST, "epochs": 1}),
                     tmp_path / "nomc", progress=False)
    assert m["test_accuracy_mc"] is None and m["prediction"] == "deterministic"


def test_load_run_restores_the_trained_model(finished):
    cfg, out, metrics = finished
    run = load_run(out)
    assert run.config == cfg and run.method.name == "dipnet" and not run.model.training
    with torch.no_grad():
        probs = run.method.predictive_probs(run.model, run.data.test.x)
    acc = float((probs.argmax(-1) == run.data.test.y).float().mean())
    # 1e-6 is far below one example (1/359): the same predictions, float32 rounding aside
    assert acc == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert run.method.sample_logits(run.model, run.data.test.x[:4]) is not None


def test_corrupt_or_missing_files_are_clear_errors(finished, tmp_path):
    import shutil

    _, out, _ = finished
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="model.safetensors is corrupt"):
        load_run(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(UserError, match="not a finished run: model.safetensors is missing"):
        load_run(bad)
    # a corrupt checkpoint of an unfinished run
    (bad / "metrics.json").unlink()
    ckpt = next((bad / "checkpoint").glob("epoch-*"))
    (ckpt / "state.pt").write_bytes(b"garbage")
    cfg = RunConfig.load(bad / "config.yaml")
    with pytest.raises(UserError, match="checkpoint .* is corrupt"):
        run_training(cfg, bad, progress=False)


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(UserError, match="'epochs'=0"):
        RunConfig(epochs=0)
    with pytest.raises(UserError, match="'train_perturbation'='pgd'"):
        RunConfig(train_perturbation="pgd")
    with pytest.raises(UserError, match=r"unknown config field\(s\) \['epoch'\]"):
        RunConfig.from_dict({"epoch": 3})
    with pytest.raises(UserError, match="'dip' is invalid"):
        RunConfig(dip={"alpha": -1})
    path = tmp_path / "c.yaml"
    path.write_text("epochs: [1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        RunConfig.load(path)
    cfg = RunConfig(method="dipnet", dip={"placement": "input"}, seed=2)
    assert cfg.run_name() == "digits-mlp-dipnet-none-s2"
    assert cfg.resolved_method_params() == {"placement": "input"}
    cfg.save(tmp_path / "r.yaml")
    assert RunConfig.load(tmp_path / "r.yaml") == cfg


def test_cli_train_config_file_flags_override_and_errors(tmp_path, capsys):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({**RunConfig(**FAST).to_dict(), "epochs": 9,
                                        "method": "rs"}))
    out = tmp_path / "cli"
    code = main(["train", "--config", str(cfg_file), "--epochs", "2", "--param", "sigma=0.3",
                 "--model-param", "hidden=[32]", "--out", str(out), "--no-progress"])
    assert code == 0
    saved = RunConfig.load(out / "config.yaml")
    assert saved.epochs == 2 and saved.method == "rs"  # flag wins, file fills the rest
    assert saved.method_params == {"sigma": 0.3} and saved.model_params == {"hidden": [32]}
    assert "test accuracy" in capsys.readouterr().out
    # a second time: nothing to do, says so
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "already finished" in said and "--overwrite" in said
    # bad values: exit 2 and one line naming the problem
    for argv, msg in ((["--method", "magic"], "unknown method 'magic'"),
                      (["--param", "sigma"], "must look like key=value"),
                      (["--epochs", "-1"], "'epochs'=-1"),
                      (["--dataset", "imagenet"], "unknown data set 'imagenet'")):
        code = main(["train", *argv, "--out", str(tmp_path / "x"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and msg in err and len(err.splitlines()) == 1, err


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for opt in ("--dataset", "--model", "--method", "--epochs", "--seed", "--out", "--config",
                "--batch-size", "--lr", "--train-perturbation", "--max-train", "--data-dir",
                "--overwrite", "--param", "--dip", "--model-param", "--threads", "--device"):
        assert opt in text, opt
