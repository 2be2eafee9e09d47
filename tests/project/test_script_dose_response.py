"""scripts/dose_response.py: learned and frozen arms share each level, start and seed; the
report pairs them by seed, and what it writes is what the runs measured."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def study(monkeypatch):
    spec = importlib.util.spec_from_file_location("dose_response", ROOT / "scripts" /
                                                  "dose_response.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "dose_response", mod)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "LEVELS", (0.1,))
    monkeypatch.setattr(mod, "TEMPERATURES", (10.0,))
    monkeypatch.setattr(mod, "EVAL", {**mod.EVAL, "attack_points": 40, "corruption_points": 20,
                                      "pgd_steps": 3, "eot_samples": 2})
    return mod


def test_learned_and_frozen_arms_differ_only_in_learning(study):
    out = Path("/nonexistent")
    learned = study.make_config("mlp", "none", "dipnet", dict(study.arms()[1][2]), 0, out)
    frozen = study.make_config("mlp", "none", "fixed_noise", dict(study.arms()[2][2]), 0, out)
    assert study.arms()[1][0] == "dipnet@0.1" and study.arms()[2][0] == "fixed_noise@0.1"
    from dipnet.experiments.zoo.methods import get_method

    a = get_method(learned.method, **learned.resolved_method_params()).dip_config
    b = get_method(frozen.method, **frozen.resolved_method_params()).dip_config
    assert a.init_scale == b.init_scale == 0.1
    assert (a.placement, a.parameterization, a.alpha, a.beta, a.m) == (
        b.placement, b.parameterization, b.alpha, b.beta, b.m)
    assert (learned.lr, learned.seed, learned.epochs) == (frozen.lr, frozen.seed, frozen.epochs)
    assert a.learn_variance is True and b.learn_variance is False


def test_run_and_report_on_digits(study, tmp_path, monkeypatch):
    out, docs = tmp_path / "runs", tmp_path / "docs"
    monkeypatch.setattr(study.cf, "ProcessPoolExecutor", _InProcess)
    args = ["--arch", "digits", "--conditions", "none", "--seeds", "2", "--out", str(out),
            "--docs", str(docs)]
    assert study.main(["run", *args]) == 0
    assert study.main(["report", *args]) == 0
    res = json.loads((docs / "digits.json").read_text())
    runs = res["runs"]["none"]
    assert set(runs) == {"standard", "dipnet@0.1", "fixed_noise@0.1", "dipnet@0.1,T=10"}
    # the paired difference is recomputed from the per-seed numbers the runs wrote
    cell = res["analysis"]["none"]["test_accuracy"]["learned_minus_frozen"]["0.1"]
    diffs = [runs["dipnet@0.1"][s]["test_accuracy"] - runs["fixed_noise@0.1"][s]["test_accuracy"]
             for s in ("0", "1")]
    assert cell["diff"] == pytest.approx(sum(diffs) / 2)
    for arm, seeds in runs.items():
        for seed, row in seeds.items():
            metrics = json.loads((out / "digits" / "none" / study._slug(arm) / f"s{seed}" /
                                  "metrics.json").read_text())
            assert row["test_accuracy"] == metrics["test_accuracy"]
    # every Holm p-value is at least its raw p
    for t in cell, *res["analysis"]["none"]["test_accuracy"]["vs_standard"].values():
        assert t["p_holm"] >= t["p"] - 1e-12 or t["p"] != t["p"]
    assert (docs / "digits_dose_response.png").stat().st_size > 10_000
    # a frozen arm's variances never moved: its run records the same start and end
    frozen = yaml.safe_load((out / "digits" / "none" / "fixed_noise_0.1" / "s0" /
                             "config.yaml").read_text())
    assert frozen["method"] == "fixed_noise"
    # resume: a second run has nothing to do
    assert study.main(["run", *args]) == 0


class _InProcess:
    """The pool, in this process (a test cannot afford process start-up per run)."""

    def __init__(self, max_workers: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, jobs):
        return map(fn, jobs)
