"""docs/results/summary.json: the machine-readable index of the headline measurements."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "docs" / "results" / "summary.json"


def _script():
    spec = importlib.util.spec_from_file_location("results_summary", ROOT / "scripts" /
                                                  "results_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summary_parses_and_every_row_names_existing_files():
    mod = _script()
    doc = json.loads(SUMMARY.read_text())
    assert doc["rows"], "summary.json has no rows"
    for row in doc["rows"]:
        missing = [f for f in mod.FIELDS if f not in row]
        assert not missing, (row["study"], missing)
        assert row["architecture"] in mod.ARCHITECTURES
        assert isinstance(row["pretrained"], bool) and row["n_seeds"] >= 1
        assert row["files"] and all((ROOT / f).is_file() for f in row["files"]), row["files"]
        if row["p_vs_standard"] is not None:
            assert row["p_holm"] is not None and row["p_holm"] >= row["p_vs_standard"] - 1e-12
        if row["ci_low"] is not None:
            assert row["ci_low"] <= row["mean"] <= row["ci_high"]


def test_summary_is_what_the_committed_files_give():
    """A rebuild from the committed result files gives the committed summary.json."""
    assert _script().main(["--check"]) == 0


def test_a_row_recomputes_from_its_file():
    doc = json.loads(SUMMARY.read_text())
    row = next(r for r in doc["rows"] if r["study"] == "variance_study_tuned20"
               and r["arm"] == "fixed_noise")
    d = json.loads((ROOT / row["files"][0]).read_text())
    accs = [r["test_accuracy"] for r in d["runs"] if r["method"] == "fixed_noise"]
    assert math.isclose(row["mean"], sum(accs) / len(accs), rel_tol=1e-6)
    assert row["n_seeds"] == len(accs)


def test_the_vit_rows_are_the_scorecards_cells():
    """summary.json reads a compare sweep the way its scorecard does (one rule: the scorecard's
    columns): every arm's difference from standard is the committed scorecard's cell."""
    doc = json.loads(SUMMARY.read_text())
    d = json.loads((ROOT / "docs" / "results" / "vit" / "results.json").read_text())
    (card,) = d["scorecards"]
    ids = {"test_accuracy": ("clean", "perturbed"), "pgd_eot_linf_0.05": ("pgd",),
           "corruption_accuracy": ("corruptions",), "ece": ("ece",)}
    checked = 0
    for row in doc["rows"]:
        if row["study"] != "vit_finetune" or row.get("diff_vs_standard") is None:
            continue
        col = ids[row["metric"]][0 if row["condition"] == "clean" else -1]
        (mine,) = [r for r in card["rows"] if r["method"] == row["arm"]]
        # results.json rounds to 7 significant digits (measured: at most 1.7e-8 apart here),
        # so 1e-7 on a fraction is 1e-5 percentage points
        assert math.isclose(row["diff_vs_standard"], mine["cells"][col]["mean_diff"],
                            abs_tol=1e-7), (row["arm"], row["metric"])
        checked += 1
    assert checked == 6 * 5  # six arms against standard, five scorecard questions
