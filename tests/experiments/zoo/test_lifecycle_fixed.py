"""The paper's Table 1 protocol read as a FIXED perturbed training set (issue 8, item 4).

``perturbation_mode: fixed`` perturbs the training set once before training: Gaussian noise from
a generator seeded by (split_seed, seed); FGSM against a clean standard reference model trained
first (and cached beside the run, shared by every method of a sweep).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dipnet.cli import main
from dipnet.errors import UserError
from dipnet.experiments.run import checkpoint
from dipnet.experiments.run import train as train_mod
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import load_dataset
from dipnet.experiments.zoo.fixed import fixed_gaussian_inputs, reference_dir
from dipnet.experiments.zoo.perturb import fgsm
from dipnet.experiments.run.runs import load_run
from dipnet.experiments.sweep.grid import SweepConfig, expand_grid, run_sweep

torch.set_num_threads(1)
FAST = dict(dataset="digits", model="mlp", model_params={"hidden": [16]}, epochs=2,
            batch_size=64, num_threads=1, mc_samples=2, eval_mc=False)


def _timeless(history):
    return [{k: v for k, v in row.items() if "time" not in k} for row in history]


def test_fixed_gaussian_set_is_seeded_clipped_and_sigma_sized():
    x = load_dataset("digits").train.x
    a = fixed_gaussian_inputs(x, 0.2, split_seed=0, seed=0)
    assert torch.equal(a, fixed_gaussian_inputs(x, 0.2, split_seed=0, seed=0))
    assert not torch.equal(a, fixed_gaussian_inputs(x, 0.2, split_seed=0, seed=1))
    assert not torch.equal(a, fixed_gaussian_inputs(x, 0.2, split_seed=1, seed=0))
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0  # the [0, 1] convention of perturb.py
    # the noise has std sigma. On pixels in (0.4, 0.6) (6,258 of them) clipping only cuts
    # |noise| > 2 sigma, which leaves the median |noise| (0.6745 sigma) intact. Measured over
    # seeds 0-7: 0.194-0.202 (relative standard error ~1.5%); 0.012 is 4 standard errors.
    mid = (x > 0.4) & (x < 0.6)
    sigma_hat = float((a - x)[mid].abs().median()) / 0.6745
    assert abs(sigma_hat - 0.2) < 0.012, sigma_hat


def test_fixed_differs_from_fresh_and_is_shared_by_methods(tmp_path):
    cfg = RunConfig(method="standard", train_perturbation="gaussian", seed=0, **FAST)
    fixed = RunConfig.from_dict({**cfg.to_dict(), "perturbation_mode": "fixed"})
    assert cfg.run_name() == "digits-mlp-standard-gaussian-s0"  # fresh names are unchanged
    assert fixed.run_name() == "digits-mlp-standard-gaussian-fixed-s0"
    m_fresh = run_training(cfg, tmp_path / "fresh")
    m_fixed = run_training(fixed, tmp_path / "fixed")
    assert m_fresh["perturbation_mode"] == "fresh" and m_fresh["fixed_perturbation"] is None
    assert m_fixed["perturbation_mode"] == "fixed"
    # The fixed run trained on exactly the seeded fixed set (its digest), the fresh one on none
    # (tests/experiments/sweep/test_protocol.py checks every batch of both epochs against that set).
    import hashlib

    x = load_dataset("digits", None, fixed.val_fraction, fixed.split_seed).train.x
    expected = fixed_gaussian_inputs(x, fixed.strength, fixed.split_seed, fixed.seed)
    assert m_fixed["fixed_perturbation"]["sha256"] == hashlib.sha256(
        expected.contiguous().numpy().tobytes()).hexdigest()
    dip = RunConfig.from_dict({**fixed.to_dict(), "method": "dipnet"})
    other_seed = RunConfig.from_dict({**fixed.to_dict(), "seed": 1})
    digest = m_fixed["fixed_perturbation"]["sha256"]
    assert run_training(dip, tmp_path / "dip")["fixed_perturbation"]["sha256"] == digest
    assert run_training(other_seed, tmp_path / "s1")["fixed_perturbation"]["sha256"] != digest


def run_training(cfg, out):
    return train_mod.run_training(cfg, out, progress=False)


def test_fixed_fgsm_resumes_identically_and_trains_its_reference_once(tmp_path, monkeypatch):
    cfg = RunConfig(method="dipnet", train_perturbation="fgsm", perturbation_mode="fixed",
                    seed=2, **FAST)
    clean = run_training(cfg, tmp_path / "runs" / "clean")
    ref = reference_dir(cfg, tmp_path / "runs" / "clean")
    assert ref.parent == tmp_path / "runs" / "_reference"
    assert ref.name.startswith("digits-mlp-standard-none-s2-")
    assert clean["fixed_perturbation"]["reference_run"] == str(ref)
    ref_metrics = json.loads((ref / "metrics.json").read_text())
    assert ref_metrics["method"] == "standard" and ref_metrics["train_perturbation"] == "none"
    stamp = (ref / "metrics.json").stat().st_mtime_ns

    # kill the run after its first epoch's checkpoint, then resume it
    real_save = checkpoint.save_checkpoint

    def save_then_die(out, model, state):
        path = real_save(out, model, state)
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "runs" / "killed")
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    resumed = run_training(cfg, tmp_path / "runs" / "killed")
    assert "resumed from the checkpoint after epoch 1" in (
        tmp_path / "runs" / "killed" / "train.log").read_text()
    assert resumed["fixed_perturbation"]["sha256"] == clean["fixed_perturbation"]["sha256"]
    assert _timeless(resumed["history"]) == _timeless(clean["history"])
    assert resumed["test_accuracy"] == clean["test_accuracy"]
    # one reference, trained once, reused by the other two starts
    assert [p.name for p in ref.parent.iterdir()] == [ref.name]
    assert (ref / "metrics.json").stat().st_mtime_ns == stamp
    assert (ref / "train.log").read_text().count("start:") == 1


def test_fixed_fgsm_set_is_fgsm_of_the_reference(tmp_path):
    from dipnet.experiments.run.train import fixed_training_set

    cfg = RunConfig(method="standard", train_perturbation="fgsm", perturbation_mode="fixed",
                    seed=0, perturbation_strength=0.1, **FAST)
    out = tmp_path / "runs" / "a"
    train = load_dataset("digits").train
    x_fixed, info = fixed_training_set(cfg, train, out, torch.device("cpu"), progress=False)
    reference = load_run(info["reference_run"], load_data=False)
    expected = fgsm(reference.model, train.x, train.y, 0.1)
    # the run attacks in batches of eval_batch_size, here all at once: the gradient's sign is
    # the same up to float round-off, which could flip a sign where it is ~0 (none did here)
    assert float(((x_fixed - expected).abs() > 1e-6).float().mean()) < 1e-3
    assert float((x_fixed - train.x).abs().max()) <= 0.1 + 1e-6
    assert float((x_fixed != train.x).float().mean()) > 0.5  # most pixels moved


def test_sweep_config_accepts_perturbation_mode_and_shares_one_reference(tmp_path):
    base = {"dataset": "digits", "model": "mlp", "methods": ["standard", "dipnet"],
            "seeds": [0], "train_perturbations": ["none", "fgsm"],
            "perturbation_mode": "fixed",
            "run": {"epochs": 1, "num_threads": 1, "batch_size": 64, "mc_samples": 2,
                    "eval_mc": False, "model_params": {"hidden": [16]}}}
    sweep = SweepConfig.from_dict(base)
    names = sorted(c.run_name() for c in expand_grid(sweep))
    assert names == ["digits-mlp-dipnet-fgsm-fixed-s0", "digits-mlp-dipnet-none-s0",
                     "digits-mlp-standard-fgsm-fixed-s0", "digits-mlp-standard-none-s0"]
    result = run_sweep(sweep, tmp_path / "sweep", progress=False)
    assert not result.failed and len(result.trained) == 4
    refs = list((tmp_path / "sweep" / "runs" / "_reference").iterdir())
    assert len(refs) == 1 and (refs[0] / "train.log").read_text().count("start:") == 1
    digests = {json.loads((d / "metrics.json").read_text())["fixed_perturbation"]["sha256"]
               for d in result.run_dirs if "fgsm" in d.name}
    assert len(digests) == 1  # both methods trained on the same perturbed set
    # the CLI option gives the same sweep; resuming it trains nothing
    stamps = {d: (d / "metrics.json").stat().st_mtime_ns for d in result.run_dirs}
    assert main(["compare", "--config", str(tmp_path / "sweep" / "sweep.yaml"),
                 "--perturbation-mode", "fixed", "--out", str(tmp_path / "sweep"), "--quiet",
                 "--no-report"]) == 0
    assert {d: (d / "metrics.json").stat().st_mtime_ns for d in result.run_dirs} == stamps
    with pytest.raises(UserError, match="perturbation_mode"):
        SweepConfig.from_dict({**base, "perturbation_mode": "once"})


def test_reference_cache_shares_one_reference_across_parent_folders(tmp_path):
    from dipnet.experiments.run.train import fixed_training_set

    cache = tmp_path / "refs"
    cfg = RunConfig(method="standard", train_perturbation="fgsm", perturbation_mode="fixed",
                    seed=0, reference_cache=str(cache), **{**FAST, "epochs": 1})
    train = load_dataset("digits").train
    xa, a = fixed_training_set(cfg, train, tmp_path / "study-a" / "run", torch.device("cpu"))
    xb, b = fixed_training_set(cfg, train, tmp_path / "study-b" / "run", torch.device("cpu"))
    assert a == b and Path(a["reference_run"]).parent == cache
    assert len(list(cache.iterdir())) == 1 and torch.equal(xa, xb)
    assert not (tmp_path / "study-a" / "_reference").exists()


def test_a_sweep_folder_holds_one_perturbation_mode(tmp_path, capsys):
    """Fresh and fixed FGSM runs share the condition name 'fgsm': one folder never gets both,
    so a report cannot pool the two readings."""
    sweep = {"dataset": "digits", "model": "mlp", "methods": ["standard"], "seeds": [0],
             "train_perturbations": ["gaussian"],
             "run": {"epochs": 1, "num_threads": 1, "mc_samples": 2, "eval_mc": False,
                     "model_params": {"hidden": [16]}}}
    run_sweep(SweepConfig.from_dict(sweep), tmp_path, progress=False)
    before = (tmp_path / "sweep.yaml").read_text()
    with pytest.raises(UserError, match="fresh-mode perturbed runs"):
        run_sweep(SweepConfig.from_dict({**sweep, "perturbation_mode": "fixed"}), tmp_path,
                  progress=False)
    assert (tmp_path / "sweep.yaml").read_text() == before
