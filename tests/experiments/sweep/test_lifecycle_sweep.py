"""The lifecycle of a sweep (`dipnet compare`): plan and validate everything, then write.

Issue 9, item 3 (a rejected compare must not have rewritten OUT/sweep.yaml) and item 1 for
sweeps (a damaged finished run is refused, not reused).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dipnet.cli import main
from dipnet.errors import UserError
from dipnet.experiments.sweep.grid import SweepConfig, apply_params, expand_grid

TINY = {"dataset": "digits", "model": "mlp", "methods": ["standard"], "seeds": [0],
        "run": {"epochs": 1, "num_threads": 1, "batch_size": 64, "mc_samples": 2,
                "model_params": {"hidden": [16]}}}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A finished one-run sweep, made by the command line."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "sweep"
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    return out


@pytest.mark.parametrize("change, message", [
    (["--dataset", "nope"], "unknown data set 'nope'"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--param", "model.hidden=[-3]"], "cannot be built"),
    (["--epochs", "2"], "epochs: 1 there vs 2 now"),
    (["--param", "sam.rho=0.1"], "sam"),                    # sam is not among the methods
    (["--param", "dip.m=2"], "dipnet"),                     # nor is dipnet
])
def test_a_rejected_compare_leaves_the_sweep_folder_as_it_was(sweep_dir, capsys, change,
                                                              message):
    before = _snapshot(sweep_dir)
    code = main(["compare", "--config", str(sweep_dir / "sweep.yaml"), *change, "--out",
                 str(sweep_dir), "--quiet", "--no-report"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert _snapshot(sweep_dir) == before  # sweep.yaml and provenance.json untouched


def test_a_new_sweep_that_is_rejected_creates_no_folder(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "dataset": "nope"}))
    assert main(["compare", "--config", str(cfg), "--out", str(tmp_path / "new"),
                 "--quiet"]) == 2
    assert "unknown data set" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name, damage", [("config.yaml", "seed: [1\n"),
                                          ("metrics.json", "{\"status\": ")])
def test_a_damaged_finished_run_in_a_sweep_is_refused(sweep_dir, capsys, name, damage):
    run = next((sweep_dir / "runs").iterdir())
    (run / name).write_text(damage)
    before = _snapshot(sweep_dir)
    code = main(["compare", "--config", str(sweep_dir / "sweep.yaml"), "--out",
                 str(sweep_dir), "--quiet", "--no-report"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and name in err, err
    assert _snapshot(sweep_dir) == before


def test_compare_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["compare", "--config", str(cfg), "--out", str(tmp_path / "afile" / "s"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "afile" in err and "--out" in err, err


def test_dip_settings_reach_only_the_runs_built_on_dipconfig():
    sweep = apply_params(SweepConfig.from_dict(
        {**TINY, "methods": ["standard", "dipnet", "fixed_noise"]}), ["dip.m=2"])
    cfgs = {c.method: c for c in expand_grid(sweep)}
    assert cfgs["dipnet"].dip == {"m": 2} and cfgs["standard"].dip == {}
    assert cfgs["fixed_noise"].resolved_method_params() == {"m": 2}  # the control shares them
    with pytest.raises(UserError, match="perturbation_mode"):
        SweepConfig.from_dict({**TINY, "perturbation_mode": "sometimes"})
