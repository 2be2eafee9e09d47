"""Out-of-distribution detection: score in-distribution test data against shifted data sets.

Scores (higher = more in-distribution, as roc_auc_score expects with in-distribution as the
positive class):
- ``msp``: maximum softmax probability of the prediction (Hendrycks & Gimpel 2017);
- ``entropy``: minus the predictive entropy H[mean_j p_j];
- ``mutual_information``: minus H[mean_j p_j] - mean_j H[p_j], the epistemic part (sampled
  predictions only; it is 0 for a deterministic one, so it is not reported there).
These are the quantities `dipnet.predict` returns, computed here from any predictor's sampled
logits so that non-DIPNet stochastic baselines (MC dropout, randomized smoothing) get the same.
AUROC is sklearn.metrics.roc_auc_score.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .predictors import Predictor, predict_samples

# For each in-distribution data set, the data sets it is scored against (same input shape).
OOD_PAIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("fashion_mnist", "animal_mnist"),
    "fashion_mnist": ("mnist", "animal_mnist"),
    "animal_mnist": ("mnist", "fashion_mnist"),
    "cifar10": ("cifar100",),
    "cifar100": ("cifar10",),
}


def _entropy(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).sum(-1)


@torch.no_grad()
def ood_scores(predictor: Predictor, x: torch.Tensor, batch_size: int = 1000) -> dict[str, np.ndarray]:
    """Per-example in-distribution scores (higher = more in-distribution), see the module docstring.

    Returns:
        ``{"msp": (N,), "entropy": (N,)}`` plus ``"mutual_information"`` for a stochastic predictor.
    """
    samples = predict_samples(predictor, x, batch_size).float()  # (k, N, C)
    log_ps = torch.log_softmax(samples, -1)
    log_p = torch.logsumexp(log_ps, 0) - math.log(log_ps.shape[0])
    ent = _entropy(log_p)
    out = {"msp": log_p.exp().max(-1).values.cpu().numpy(), "entropy": (-ent).cpu().numpy()}
    if predictor.stochastic:
        mi = (ent - _entropy(log_ps).mean(0)).clamp_min(0.0)
        out["mutual_information"] = (-mi).cpu().numpy()
    return out


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of separating in- (positive) from out-of-distribution examples by score."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([np.ones(len(in_scores)), np.zeros(len(out_scores))])
    return float(roc_auc_score(y, np.concatenate([in_scores, out_scores])))


def ood_detection(predictors: Sequence[Predictor], in_name: str, x_in: torch.Tensor,
                  out_sets: dict[str, torch.Tensor], batch_size: int = 1000) -> list[dict]:
    """AUROC of every score of every predictor for in-distribution ``x_in`` vs each out set.

    Returns:
        one dict per (out set, prediction, score): ``{in_dataset, out_dataset, prediction, score,
        auroc, n_in, n_out}``.
    """
    rows = []
    for p in predictors:
        s_in = ood_scores(p, x_in, batch_size)
        for out_name, x_out in out_sets.items():
            s_out = ood_scores(p, x_out, batch_size)
            for score in s_in:
                rows.append({"in_dataset": in_name, "out_dataset": out_name, "prediction": p.name,
                             "score": score, "auroc": auroc(s_in[score], s_out[score]),
                             "n_in": int(x_in.shape[0]), "n_out": int(x_out.shape[0])})
    return rows
