"""The Hugging Face experiments use the project's one statistics module and one calibration.

Issue 21: hf_experiments kept its own mean/std (std 0 for one value), an unpaired Welch test
where every other report pairs by seed, and a second ECE / NLL / Brier. These tests compared
the copies with `dipnet.experiments.report.stats` and `dipnet.evaluation.calibration` before they
went, and now guard that the reports read their numbers from those.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dipnet.evaluation import calibration as evaluation_calibration
from dipnet.experiments.report import stats

pytest.importorskip("transformers")
from dipnet.experiments.hf import common, math as math_exp, text  # noqa: E402


def test_the_text_calibration_is_the_evaluation_calibration() -> None:
    g = np.random.default_rng(0)
    logits = g.normal(size=(300, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = g.integers(0, 3, 300)
    got = text.calibration(probs, labels, bins=15)
    p, y = torch.as_tensor(probs), torch.as_tensor(labels)
    want = evaluation_calibration.calibration_metrics(torch.log(p), y, bins=15)
    assert got["acc"] == pytest.approx(float((p.argmax(1) == y).double().mean()))
    # float32 (evaluation) against float64 sums: measured differences below 3e-8.
    for key in ("ece", "nll", "brier"):
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), key


def test_summaries_are_the_stats_modules() -> None:
    values = [0.7, 0.75, 0.72]
    s = stats.summarize(values)
    got = common.summary_of(values)
    assert (got["mean"], got["std"], got["n"]) == (s.mean, s.std, s.n)
    assert got["values"] == values
    assert math.isnan(common.summary_of([0.7])["std"])  # undefined for one value, not 0
    assert common.fmt(values, 100, 1) == stats.format_mean_std(s, 100, 1)
    assert common.fmt([]) == "-"


def _text_run(method: str, seed: int, acc: float) -> dict:
    det = {"acc": acc, "ece": 0.1, "nll": 0.5, "brier": 0.3}
    return {"method": method, "seed": seed, "det": det, "mc": det, "char_noise": {"0.1": acc},
            "pgd_l2_acc": acc, "pgd_linf_acc": acc, "eot_pgd_l2_mc_acc": acc,
            "train_time_s": 1.0, "attack_n": 4, "train_steps": 2, "test_spam_fraction": 0.4,
            "split": {"train": 8, "test": 4},
            "settings": {"split_seed": 0, "max_length": 8, "batch_size": 2, "lr": 1e-3,
                         "mc_k": 2, "l2_eps": 0.1, "linf_eps": 0.5, "attack_steps": 2,
                         "eot_k": 2}}


def test_the_text_report_pairs_by_seed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    std = {0: 0.70, 1: 0.80, 2: 0.60, 3: 0.75}
    # dipnet is 0.02 below standard on every shared seed but one; seed 3 has no dipnet run.
    dip = {0: 0.68, 1: 0.79, 2: 0.57}
    (tmp_path / "per_run").mkdir()
    for m, accs in (("standard", std), ("dipnet", dip)):
        for seed, acc in accs.items():
            (tmp_path / "per_run" / f"{m}_seed{seed}.json").write_text(
                json.dumps(_text_run(m, seed, acc)))
    text.write_report(str(tmp_path))
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    got = summary["dipnet"]["acc"]["paired_vs_standard"]
    want = stats.paired_by_seed(dip, std).to_dict()
    assert got["n"] == 3 and got["t_p"] == pytest.approx(want["t_p"])
    md = (tmp_path / "results.md").read_text()
    assert "paired t-test by seed" in md and "Welch" not in md
    assert stats.format_paired_p(want) in md
