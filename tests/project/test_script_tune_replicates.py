"""scripts/tune_replicates.py: tune -> compare, replicated; the verdict is recomputed from the
runs each replicate's compare wrote, and replicates differ in split and tuner seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 40 s on an idle 2-core machine: two tunes and two compares
def test_replicates_on_digits(tmp_path):
    spec = importlib.util.spec_from_file_location("tune_replicates", ROOT / "scripts" /
                                                  "tune_replicates.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.BASE = ["--dataset", "digits", "--set", "model.hidden=[16]", "--epochs", "1",
                "--batch-size", "64", "--threads", "1"]
    args = ["--replicates", "2", "--budget", "2", "--seeds", "2", "--jobs", "1", "--out",
            str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")]
    assert mod.main(["run", *args]) == 0
    assert mod.main(["report", *args]) == 0
    res = json.loads((tmp_path / "docs" / "replicates.json").read_text())
    assert [r["replicate"] for r in res["replicates"]] == [0, 1]
    splits = []
    for r in res["replicates"]:
        acc = mod._test_accuracy(Path(r["files"][1]))
        diffs = [acc["dipnet"][s] - acc["fixed_noise"][s] for s in r["seeds"]]
        assert r["learned_minus_frozen"]["mean_diff"] == pytest.approx(sum(diffs) / len(diffs),
                                                                      abs=1e-12)
        assert r["trials"]["dipnet"]["trials"] == r["trials"]["fixed_noise"]["trials"] == 2
        best = yaml.safe_load(Path(r["files"][0]).read_text())
        splits.append(best["run"]["split_seed"])
    assert splits == [0, 1]
