"""`dipnet demo`: the same code path as the real demo, at a tiny size (digits, 1 epoch).

The real demo (Fashion-MNIST, 5 methods, 2 seeds, trimmed quick evaluation) is timed in
docs/results/README.md; here the CLI command runs end to end with DEMO_SWEEP swapped for a
small sweep (standard and DIPNet, two seeds), two worker processes as in the real one, and a
shrunken evaluation suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dipnet.cli import main
from dipnet.cli import sweep as sweep_cli
from dipnet.experiments.sweep.grid import SweepConfig

REPO = Path(__file__).resolve().parents[2]

TINY_DEMO = {
    "name": "tiny-demo", "dataset": "digits", "model": "mlp",
    "methods": ["standard", "dipnet"], "seeds": [0, 1],
    "train_perturbations": ["none"], "evaluate": "quick", "jobs": 2,
    "run": {"epochs": 1, "batch_size": 64, "mc_samples": 2, "num_threads": 1,
            "model_params": {"hidden": [32]}},
    "method_params": {},
    "evaluation_params": {"attack_points": 24, "linf_eps": [0.0, 0.1], "l2_eps": [0.0, 1.0],
                          "pgd_steps": 3, "eot_samples": 2, "corruption_points": 24,
                          "corruptions": ["gaussian_noise"], "severities": [1],
                          "ood_points": 100, "smoothness_points": 4,
                          "lipschitz_random": 1, "lipschitz_steps": 2, "hessian_iters": 2,
                          "weight_points": 16, "trace_probes": 1, "power_iters": 2,
                          # the other parts have their own tests; leaving them out keeps this fast
                          "parts": ["clean", "calibration", "attacks"]},
}


def test_demo_config_file_matches_the_builtin_demo():
    on_disk = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert on_disk == sweep_cli.DEMO_SWEEP
    demo = SweepConfig.from_dict(on_disk)
    # the floor for the demo: standard, DIPNet, >= 2 baselines, >= 2 seeds, real data
    assert {"standard", "dipnet"} <= set(demo.methods) and len(demo.methods) >= 4
    assert len(demo.seeds) >= 2 and demo.dataset in ("fashion_mnist", "mnist")
    assert demo.evaluate == "quick"


def test_demo_command_runs_compares_evaluates_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_cli, "DEMO_SWEEP", TINY_DEMO)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    # the summary table is printed, with every method, and the report's location
    assert "| method | n | none | Δ vs standard (pp) |" in printed
    for m in TINY_DEMO["methods"]:
        assert f"| {m} | 2 |" in printed
    assert str(out / "report.md") in printed and str(out / "report.html") in printed
    # ... and the scorecard, so the printed verdict includes robustness, not clean accuracy only
    assert "Scorecard, digits / mlp" in printed
    assert "PGD L∞ acc (EOT if sampled)" in printed and "| **dipnet** | defaults | " in printed
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 4
    for d in runs:
        assert json.loads((d / "metrics.json").read_text())["status"] == "finished"
        ev = json.loads((d / "evaluation.json").read_text())
        assert {"clean", "attacks", "calibration"} <= set(ev)
    md = (out / "report.md").read_text()
    assert "## Test-time evaluation (digits / mlp)" in md
    res = json.loads((out / "results.json").read_text())
    assert any(k.startswith("eval/attacks/") for k in res["runs"][0])
    # a second demo reuses everything: no training, no evaluation
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    assert "0 run(s) trained, 4 reused" in capsys.readouterr().out
