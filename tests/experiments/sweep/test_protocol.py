"""Tests that guard the study protocol itself (issue 17, section 5).

Each pins one invariant end to end, so that a change breaking it changes a test, not only a
published number: the data that selection and per-epoch validation read, a fixed perturbation
that stays fixed and touches only the training split, frozen variances that stay frozen, the
config fields that decide whether a finished run is reused, and the independence of the noise
of different projections in one step. scripts/mutations.toml holds a mutation of each.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import dipnet
from dipnet.experiments.run import metrics as metrics_module
from dipnet.experiments.run import train as train_module
from dipnet.experiments.run.checkpoint import load_checkpoint
from dipnet.experiments.zoo.methods import Method
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import load_dataset
from dipnet.experiments.zoo.fixed import fixed_gaussian_inputs
from dipnet.experiments.run.rundir import inspect_run_folder

torch.set_num_threads(1)
FAST = dict(dataset="digits", model="mlp", model_params={"hidden": [16]}, epochs=2,
            batch_size=64, num_threads=1, mc_samples=2, eval_mc=False)


# ---------------------------------------------------------------------- selection reads val only
def _garbage_test_set(path: Path) -> Path:
    """digits with its own validation split, and a test split that is the validation inputs
    with every label wrong: any accuracy measured on it is at most 1 - the validation one."""
    d = load_dataset("digits", val_fraction=0.2)
    x_val, y_val = d.val.x.numpy(), d.val.y.numpy()
    np.savez(path, x_train=d.train.x.numpy(), y_train=d.train.y.numpy(), x_val=x_val,
             y_val=y_val, x_test=x_val, y_test=(y_val + 1) % 10)
    return path


def _accuracies(folder: Path) -> tuple[float, float]:  # also used by tests/experiments/sweep/test_tune.py
    """(validation, test) accuracy of the last checkpoint in a run folder, recomputed here."""
    cfg = RunConfig.load(folder / "config.yaml")
    prep = train_module.prepare_run(train_module.plan_run(cfg, folder))
    weights, _ = load_checkpoint(folder)
    prep.model.load_state_dict(weights)
    return tuple(metrics_module.evaluate_split(prep.method, prep.model, split)["accuracy"]
                 for split in (prep.val, prep.test))


def test_per_epoch_validation_reads_the_validation_split(tmp_path):
    data = _garbage_test_set(tmp_path / "garbage_test.npz")
    cfg = RunConfig(**{**FAST, "dataset": str(data), "lr": 0.01})
    metrics = train_module.run_training(cfg, tmp_path / "run", progress=False)
    val, test = _accuracies(tmp_path / "run")
    assert metrics["history"][-1]["val_accuracy"] == val != test
    # lr 0.01, 2 epochs: validation accuracy measured 0.77 and 0.87; the wrong labels of the
    # test split leave it at most 1 - that.
    assert all(row["val_accuracy"] > 0.5 for row in metrics["history"])
    assert metrics["test_accuracy"] == test <= 1 - val + 1e-9


# ---------------------------------------------------------------------- fixed perturbations
def test_a_fixed_perturbation_stays_fixed_and_touches_only_the_training_split(
        tmp_path, monkeypatch):
    cfg = RunConfig(method="standard", train_perturbation="gaussian",
                    perturbation_mode="fixed", seed=3, **FAST)
    clean = load_dataset("digits", None, cfg.val_fraction, cfg.split_seed)
    fixed = fixed_gaussian_inputs(clean.train.x, cfg.strength, cfg.split_seed, cfg.seed)
    fixed_rows = {row.numpy().tobytes() for row in fixed.reshape(len(fixed), -1)}
    trained_on: list[torch.Tensor] = []
    evaluated_on: list[torch.Tensor] = []
    real_step = Method.train_step
    real_eval = metrics_module.evaluate_split

    def step(self, model, optimizer, x, y):
        trained_on.append(x.detach().clone())
        return real_step(self, model, optimizer, x, y)

    def evaluate(method, model, split, *args, **kwargs):
        evaluated_on.append(split.x.detach().clone())
        return real_eval(method, model, split, *args, **kwargs)
    monkeypatch.setattr(Method, "train_step", step)
    monkeypatch.setattr(metrics_module, "evaluate_split", evaluate)
    train_module.run_training(cfg, tmp_path / "run", progress=False)
    assert len(trained_on) > 2 * (len(fixed) // 64) - 2  # both epochs were seen
    # Every batch of both epochs comes from the one fixed set (no fresh draw on top of it).
    for xb in trained_on:
        assert all(r.numpy().tobytes() in fixed_rows for r in xb.reshape(len(xb), -1))
    # ... which really is perturbed, and validation / test read the clean inputs.
    assert not torch.equal(fixed, clean.train.x)
    assert evaluated_on and all(torch.equal(x, clean.val.x) or torch.equal(x, clean.test.x)
                                for x in evaluated_on)
    assert any(torch.equal(x, clean.test.x) for x in evaluated_on)


# ---------------------------------------------------------------------- frozen variances
def test_a_frozen_arm_keeps_its_variances_bit_identical(tmp_path):
    cfg = RunConfig(method="fixed_noise", **FAST)
    before = train_module.prepare_run(train_module.plan_run(cfg, tmp_path / "plan")).model
    start = {k: v.clone() for k, v in before.state_dict().items() if "raw_variance" in k}
    assert start
    metrics = train_module.run_training(cfg, tmp_path / "run", progress=False)
    after = load_file(str(tmp_path / "run" / "model.safetensors"))
    for key, value in start.items():
        assert torch.equal(after[key], value), key
    # The weights did train (not a vacuous comparison), and dipnet proper moves its variances.
    assert any(not torch.equal(after[k], v) for k, v in before.state_dict().items()
               if "raw_variance" not in k)
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"] + 1.0
    learned = RunConfig(**{**dataclasses.asdict(cfg), "method": "dipnet",
                           "method_params": {"variance_lr": 0.1}})
    train_module.run_training(learned, tmp_path / "learned", progress=False)
    moved = load_file(str(tmp_path / "learned" / "model.safetensors"))
    assert any(not torch.equal(moved[k], v) for k, v in start.items())


# ---------------------------------------------------------------------- reuse of a finished run
#: A value different from the base's for every field that decides a run's numbers. A new
#: RunConfig field fails test_every_field_is_classified until it is added here or, if it
#: cannot change the numbers, to RunConfig.RUNTIME_FIELDS.
CHANGED = {
    "dataset": "mnist1d", "model": "resnet8", "method": "fixed_noise", "epochs": 3, "seed": 1,
    "batch_size": 32, "lr": 0.01, "optimizer": "sgd", "weight_decay": 1e-4, "momentum": 0.5,
    "lr_schedule": "constant", "val_fraction": 0.2, "split_seed": 1, "max_train": 100,
    "max_val": 50, "train_perturbation": "fgsm", "perturbation_strength": 0.3,
    "perturbation_mode": "fixed", "method_params": {"gamma": 0.1}, "dip": {"m": 3},
    "model_params": {"hidden": [8]}, "eval_batch_size": 500, "mc_samples": 4,
    "eval_mc": False, "compile": True, "normalize": {"mean": 0.5, "std": 0.25},
}
#: Fields that cannot change the numbers, and why (the same list as RunConfig.RUNTIME_FIELDS):
#: where the data files are found (the files are checked, not their path), CPU threads and the
#: device (the same numbers on one machine), where fixed-FGSM references are cached (their
#: settings are hashed into the folder name), and which trackers get copies of the metrics.
RUNTIME = {"data_dir": "/elsewhere", "num_threads": 3, "device": "cpu",
           "reference_cache": "/cache", "report_to": ["tensorboard"]}
BASE = dict(dataset="digits", model="mlp", method="dipnet", train_perturbation="gaussian",
            optimizer="adam", epochs=2, max_train=None)


def test_every_field_is_classified():
    names = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(RUNTIME) == set(RunConfig.RUNTIME_FIELDS)
    assert names == set(CHANGED) | set(RUNTIME)


def _finished_folder(path: Path, cfg: RunConfig) -> Path:
    path.mkdir(parents=True)
    cfg.save(path / "config.yaml")
    (path / "metrics.json").write_text(json.dumps({"status": "finished"}))
    return path


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_a_change_of_any_result_field_refuses_the_reuse(tmp_path, name):
    base = RunConfig(**BASE)
    folder = _finished_folder(tmp_path / "run", base)
    changed = RunConfig.from_dict({**base.to_dict(), name: CHANGED[name]})
    assert getattr(changed, name) != getattr(base, name)
    state = inspect_run_folder(folder, changed)
    assert state.kind == "different" and name in [d[0] for d in state.diff], state


@pytest.mark.parametrize("name", sorted(RUNTIME))
def test_a_change_of_a_runtime_field_reuses_the_run(tmp_path, name):
    base = RunConfig(**BASE)
    folder = _finished_folder(tmp_path / "run", base)
    changed = RunConfig.from_dict({**base.to_dict(), name: RUNTIME[name]})
    assert inspect_run_folder(folder, changed).kind == "finished"


# ---------------------------------------------------------------------- independent noise
def test_the_noise_of_different_projections_in_one_step_is_independent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 3))
    cfg = dipnet.DIPConfig(m=4, init_variance=0.5)
    dipnet.project(model, cfg)
    clean: dict[int, torch.Tensor] = {}
    noisy: dict[int, torch.Tensor] = {}
    # The clean input of layer i+1 is layer i's output; its noisy input is what it receives.
    for i, layer in enumerate(model):
        layer.register_forward_hook(lambda mod, args, out, i=i: clean.__setitem__(i + 1, out))
        layer.register_forward_pre_hook(lambda mod, args, i=i: noisy.__setitem__(i, args[0]))
    x = torch.randn(64, 16)
    model.train()
    dipnet.DIPLoss(cfg, num_train=100)(model, x, torch.randint(0, 3, (64,)))
    clean[0] = x.repeat(4, 1)
    std = [p.variance.detach().sqrt() for p in dipnet.projections(model).values()]
    eps = [((noisy[i] - clean[i]) / std[i]).reshape(-1) for i in range(3)]
    for a, b in ((0, 1), (1, 2), (0, 2)):
        r = float(torch.corrcoef(torch.stack([eps[a], eps[b]]))[0, 1])
        # 4096 pairs: an independent pair's |r| is below 0.06 (4 standard errors of 1/64);
        # noise drawn from the same seed would give r = 1.
        assert abs(r) < 0.06, (a, b, r)
    for e in eps:  # and each is the projection's standard normal noise
        assert abs(float(e.std()) - 1.0) < 0.05 and abs(float(e.mean())) < 0.06
