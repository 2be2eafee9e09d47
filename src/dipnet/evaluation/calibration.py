"""Calibration of predictive probabilities: expected calibration error, Brier score, NLL.

Hand-written (a few lines each) rather than taken from torchmetrics / netcal: those would add a
dependency (and torchmetrics a lightning one) for three formulas; the tests check them against
cases computed by hand.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017, 15 bins by default).

    ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b| over bins (lo, hi] of the top-class
    probability; a confidence of exactly 0 falls in the first bin.

    Args:
        probs: predictive probabilities, shape (N, C).
        y: labels, shape (N,).
        bins: number of equal-width bins on [0, 1].
    Returns:
        the ECE, in [0, 1].
    Raises:
        ValueError: if shapes disagree or ``bins`` < 1.
    """
    return _ece_from_bins(reliability_bins(probs, y, bins))


def _ece_from_bins(r: dict[str, list]) -> float:
    """sum_b (n_b / N) |accuracy_b - confidence_b| over the bins of `reliability_bins`."""
    n = sum(r["count"])
    if n == 0:
        return 0.0
    return sum(c / n * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"],
                                                      r["confidence"]) if c)


def reliability_bins(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> dict[str, list]:
    """The reliability diagram behind the ECE: per equal-width confidence bin (the same bins as
    `expected_calibration_error`), the mean top-class confidence, the accuracy and the count.

    Args:
        probs: predictive probabilities, shape (N, C).
        y: labels, shape (N,).
        bins: number of equal-width bins on [0, 1].
    Returns:
        ``{"bin_edges": [bins + 1 floats], "confidence": [...], "accuracy": [...],
        "count": [...]}``; confidence and accuracy are None for an empty bin.
    Raises:
        ValueError: if shapes disagree or ``bins`` < 1.
    """
    if probs.dim() != 2 or y.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (N, C) and y (N,), got {tuple(probs.shape)} and {tuple(y.shape)}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf, pred = probs.float().max(-1)
    conf, correct = conf.cpu(), (pred == y).float().cpu()
    edges = torch.linspace(0, 1, bins + 1)
    # bucketize with right=False puts conf in bin i where edges[i] < conf <= edges[i+1]; a
    # confidence of exactly 0 falls in the first bin.
    idx = torch.bucketize(conf, edges[1:-1])
    out: dict[str, list] = {"bin_edges": [float(e) for e in edges], "confidence": [],
                            "accuracy": [], "count": []}
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        out["count"].append(n)
        out["confidence"].append(float(conf[mask].mean()) if n else None)
        out["accuracy"].append(float(correct[mask].mean()) if n else None)
    return out


def brier_score(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Multi-class Brier score: mean over examples of sum_c (p_c - onehot_c)^2, in [0, 2]."""
    onehot = F.one_hot(y, probs.shape[-1]).float()
    return ((probs.float() - onehot) ** 2).sum(-1).mean().item()


def calibration_metrics(log_probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """ECE (``bins`` bins), Brier score, NLL and the reliability bins of a prediction given as
    log-probabilities (N, C)."""
    probs = log_probs.float().exp()
    reliability = reliability_bins(probs, y, bins)  # binned once: the ECE is read off the bins
    return {
        "ece": _ece_from_bins(reliability),
        "brier": brier_score(probs, y),
        "nll": F.nll_loss(log_probs.float(), y).item(),
        "ece_bins": bins,
        "reliability": reliability,
    }
