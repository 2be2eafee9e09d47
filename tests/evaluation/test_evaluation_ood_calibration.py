"""OOD scores and AUROC, and calibration metrics, on hand-computed cases and trained MLPs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dipnet
from dipnet.evaluation.calibration import (brier_score, calibration_metrics,
                                           expected_calibration_error)
from dipnet.evaluation.ood import auroc, ood_detection, ood_scores
from dipnet.evaluation.predictors import model_predictors
from test_evaluation_support import digits_split, dipnet_mlp, standard_mlp


def test_auroc_known_cases():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auroc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5


def test_scores_match_dipnet_predict():
    model = dipnet_mlp()
    _, _, x, _ = digits_split()
    det, samp = model_predictors(model, k=8)
    torch.manual_seed(5)
    s = ood_scores(samp, x)
    torch.manual_seed(5)
    ref = dipnet.predict(model, x, k=8)  # the same noise: same stacking of the k copies
    assert np.allclose(s["msp"], ref.probs.max(-1).values.numpy(), atol=1e-6)
    assert np.allclose(-s["entropy"], ref.entropy.numpy(), atol=1e-5)
    assert np.allclose(-s["mutual_information"], ref.mutual_information.numpy(), atol=1e-5)
    d = ood_scores(det, x)
    assert set(d) == {"msp", "entropy"}  # no mutual information for a deterministic prediction
    ref0 = dipnet.predict(model, x, k=0)
    assert np.allclose(d["msp"], ref0.probs.max(-1).values.numpy(), atol=1e-6)


def test_uniform_noise_images_are_detected():
    _, _, x, _ = digits_split()
    out = {"noise": torch.rand(x.shape, generator=torch.Generator().manual_seed(0))}
    rows = ood_detection(model_predictors(dipnet_mlp(), k=8), "digits", x, out)
    assert {(r["prediction"], r["score"]) for r in rows} == {
        ("deterministic", "msp"), ("deterministic", "entropy"),
        ("sampled", "msp"), ("sampled", "entropy"), ("sampled", "mutual_information")}
    for r in rows:
        # Uniform noise is far from the training data (measured AUROC about 0.95 for every
        # score); 0.85 leaves room for other seeds / torch versions.
        assert r["auroc"] > 0.85, r
        assert r["n_in"] == r["n_out"] == len(x)


def test_ece_brier_nll_by_hand():
    # Two bins used: conf 0.9 (4 examples, 3 right) and conf 0.6 (2 examples, 2 right).
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    # |0.75 - 0.9| * 4/6 + |1.0 - 0.6| * 2/6
    assert expected_calibration_error(probs, y, bins=15) == pytest.approx(0.15 * 4 / 6 + 0.4 * 2 / 6)
    brier = (3 * (0.1 ** 2 * 2) + (0.9 ** 2 * 2) + 2 * (0.4 ** 2 * 2)) / 6
    assert brier_score(probs, y) == pytest.approx(brier)
    m = calibration_metrics(probs.log(), y)
    nll = -(3 * math.log(0.9) + math.log(0.1) + 2 * math.log(0.6)) / 6
    assert m["nll"] == pytest.approx(nll, rel=1e-6)
    assert m["ece_bins"] == 15
    # A perfectly calibrated, perfectly confident prediction.
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == 0.0
    with pytest.raises(ValueError, match="probs must be"):
        expected_calibration_error(probs[0], y)


def test_temperature_scaling_moves_ece_as_expected():
    # An overconfident version of a trained net (logits x 5) is worse calibrated.
    model = standard_mlp()
    _, _, x, y = digits_split()
    with torch.no_grad():
        logits = model(x)
    base = calibration_metrics(torch.log_softmax(logits, -1), y)
    hot = calibration_metrics(torch.log_softmax(5 * logits, -1), y)
    assert hot["ece"] > base["ece"] and hot["nll"] > base["nll"]
    assert 0 <= base["ece"] < 0.1 and base["brier"] < 0.1


def test_reliability_bins_by_hand():
    from dipnet.evaluation.calibration import calibration_metrics, reliability_bins

    # Confidences 0.9, 0.9 (one right, one wrong), 0.6 (right), 0.3 (wrong; 3 classes).
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1],
                          [0.3, 0.35, 0.35]])
    y = torch.tensor([0, 1, 0, 0])
    r = reliability_bins(probs, y, bins=5)
    assert r["bin_edges"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert r["count"] == [0, 1, 1, 0, 2]  # 0.35 -> (0.2, 0.4]; 0.6 -> (0.4, 0.6]; 0.9 x 2
    assert r["confidence"][4] == pytest.approx(0.9) and r["accuracy"][4] == pytest.approx(0.5)
    assert r["accuracy"][1] == 0.0 and r["accuracy"][2] == 1.0
    assert r["confidence"][0] is None  # empty bin
    # The ECE is the count-weighted gap of these very bins.
    ece = sum(c / 4 * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"], r["confidence"])
              if c)
    m = calibration_metrics(probs.log(), y, bins=5)
    assert m["ece"] == pytest.approx(ece, abs=1e-6)
    assert m["reliability"]["count"] == r["count"]
