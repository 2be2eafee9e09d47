"""Sweeps: grid expansion, resuming finished runs, --param parsing, clean CLI errors.

The real training engine runs here on scikit-learn digits (1,797 real 8x8 images), one epoch,
so a whole 4-run sweep takes a few seconds on one thread.
"""

from __future__ import annotations

import json

import pytest

from dipnet.cli import main
from dipnet.errors import UserError
from dipnet.experiments.sweep.grid import (SweepConfig, apply_params, expand_grid, is_finished,
                                           load_sweep_config, parse_param, run_sweep)

TINY = {"dataset": "digits", "model": "mlp", "methods": ["standard", "dipnet"],
        "seeds": [0, 1], "run": {"epochs": 1, "num_threads": 1, "batch_size": 64,
                                 "model_params": {"hidden": [32]}}}


def test_grid_covers_every_condition_method_and_seed():
    sweep = SweepConfig.from_dict({**TINY, "train_perturbations": ["none", "fgsm"]})
    cfgs = expand_grid(sweep)
    assert len(cfgs) == 2 * 2 * 2
    assert {(c.train_perturbation, c.method, c.seed) for c in cfgs} == {
        (p, m, s) for p in ("none", "fgsm") for m in ("standard", "dipnet") for s in (0, 1)}
    assert all(c.epochs == 1 and c.model_params == {"hidden": [32]} for c in cfgs)
    assert len({c.run_name() for c in cfgs}) == 8


def test_second_sweep_trains_nothing(tmp_path):
    sweep = SweepConfig.from_dict(TINY)
    first = run_sweep(sweep, tmp_path, progress=False)
    assert len(first.trained) == 4 and not first.reused and not first.failed
    assert all(is_finished(d) for d in first.run_dirs)
    stamps = {d: (d / "metrics.json").stat().st_mtime_ns for d in first.run_dirs}
    accs = {d: json.loads((d / "metrics.json").read_text())["test_accuracy"]
            for d in first.run_dirs}

    second = run_sweep(sweep, tmp_path, progress=False)
    assert second.trained == [] and sorted(second.reused) == sorted(first.run_dirs)
    # nothing was rewritten: the finished runs were reused as they were
    assert {d: (d / "metrics.json").stat().st_mtime_ns for d in second.run_dirs} == stamps
    assert {d: json.loads((d / "metrics.json").read_text())["test_accuracy"]
            for d in second.run_dirs} == accs
    # provenance keeps both invocations; sweep.yaml round-trips to the same sweep
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert len(prov["invocations"]) == 2 and prov["invocations"][0]["torch"]
    assert load_sweep_config(tmp_path / "sweep.yaml").to_dict() == sweep.to_dict()


def test_changed_settings_do_not_silently_reuse_old_runs(tmp_path):
    run_sweep(SweepConfig.from_dict({**TINY, "methods": ["standard"], "seeds": [0]}), tmp_path,
              progress=False)
    changed = {**TINY, "methods": ["standard"], "seeds": [0],
               "run": {**TINY["run"], "epochs": 2}}
    with pytest.raises(UserError, match="other settings.*epochs: 1 there vs 2 now"):
        run_sweep(SweepConfig.from_dict(changed), tmp_path, progress=False)
    # runtime-only fields (threads) may change without retraining
    same = {**TINY, "methods": ["standard"], "seeds": [0],
            "run": {**TINY["run"], "num_threads": 2}}
    assert run_sweep(SweepConfig.from_dict(same), tmp_path, progress=False).trained == []


def test_interrupted_sweep_resumes_only_missing_runs(tmp_path):
    sweep = SweepConfig.from_dict(TINY)
    first = run_sweep(sweep, tmp_path, progress=False)
    gone = first.run_dirs[1]
    (gone / "metrics.json").unlink()  # as if the sweep had been killed during this run
    again = run_sweep(sweep, tmp_path, progress=False)
    assert again.trained == [gone] and len(again.reused) == 3


def test_parse_and_apply_params():
    assert parse_param("sam.rho=0.1") == ("sam", ["rho"], 0.1)
    assert parse_param("model.hidden=[64, 64]") == ("model", ["hidden"], [64, 64])
    sweep = apply_params(SweepConfig.from_dict(TINY),
                         ["dipnet.gamma=0.05", "dip.alpha=0.2", "run.lr=0.01",
                          "model.hidden=[16]"])
    assert sweep.method_params == {"dipnet": {"gamma": 0.05}}
    assert sweep.run["dip"] == {"alpha": 0.2} and sweep.run["lr"] == 0.01
    assert sweep.run["model_params"] == {"hidden": [16]}
    cfgs = {c.method: c for c in expand_grid(sweep)}
    assert cfgs["dipnet"].method_params == {"gamma": 0.05}
    assert cfgs["standard"].method_params == {}
    for bad in ("gamma=1", "nomethod.x=1", "sam.rho"):
        with pytest.raises(UserError):
            parse_param(bad)


@pytest.mark.parametrize("change, fragment", [
    ({"methods": ["standard", "magic"]}, "unknown method"),
    ({"train_perturbations": ["rain"]}, "unknown train perturbation"),
    ({"evaluate": "thorough"}, "--evaluate"),
    ({"seeds": [0, 0]}, "repeat"),
    ({"jobs": 0}, "--jobs"),
    ({"colour": "red"}, "unknown key"),
])
def test_bad_sweep_settings_raise_user_error(change, fragment):
    with pytest.raises(UserError, match=fragment):
        SweepConfig.from_dict({**TINY, **change})


def test_bad_run_field_is_a_user_error():
    with pytest.raises(UserError, match="epochs"):
        expand_grid(SweepConfig.from_dict({**TINY, "run": {"epochs": 0}}))


@pytest.mark.parametrize("argv, fragment", [
    (["compare", "--dataset", "digits", "--model", "mlp", "--methods", "standard,nope",
      "--out", "X"], "unknown method"),
    (["compare", "--dataset", "digits", "--model", "mlp", "--methods", "standard",
      "--seeds", "two", "--out", "X"], "--seeds"),
    # (--model defaults to mlp since the one-grammar CLI, issue 11; --methods has no default)
    (["compare", "--dataset", "digits", "--model", "mlp", "--out", "X"], "--methods"),
    (["compare", "--config", "does/not/exist.yaml", "--out", "X"], "does not exist"),
    (["compare", "--dataset", "digits", "--model", "mlp", "--methods", "standard",
      "--epochs", "0", "--out", "X"], "--epochs"),
    (["compare", "--dataset", "digits", "--model", "mlp", "--methods", "standard",
      "--param", "sam.rho", "--out", "X"], "lacks '='"),
    (["report", "no/such/sweep"], "not a folder"),
])
def test_cli_bad_options_give_one_clean_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dipnet: error:") and fragment in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "X" / "runs").exists()  # validation happens before any training


def test_every_option_has_help(capsys):
    for cmd in ("compare", "report", "demo"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "usage: dipnet " + cmd in out
    # every option of compare carries a help text (argparse prints none otherwise)
    from dipnet.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for cmd in ("compare", "report", "demo"):
        for action in sub[cmd]._actions:
            assert action.help, f"{cmd} {action.option_strings or action.dest} lacks --help text"
