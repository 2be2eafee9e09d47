"""Out-of-distribution detection: score in-distribution test data against shifted data sets.

Scores (higher = more in-distribution, as roc_auc_score expects with in-distribution as the
positive class):
- ``msp``: maximum softmax probability of the prediction (Hendrycks & Gimpel 2017);
- ``entropy``: minus the predictive entropy H[mean_j p_j];
- ``mutual_information``: minus H[mean_j p_j] - mean_j H[p_j], the epistemic part (sampled
  predictions only; it is 0 for a deterministic one, so it is not reported there).
These are the quantities `dipnet.predict` returns, computed here from any predictor's sampled
logits so that non-DIPNet stochastic baselines (MC dropout, randomized smoothing) get the same.
AUROC is the exact rank (Mann-Whitney) statistic, see `auroc`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dipnet.evaluation.predictors import Predictor, PredictionSummary, entropy, predict_summary

# For each in-distribution data set, the data sets it is scored against (same input shape).
OOD_PAIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("fashion_mnist", "animal_mnist"),
    "fashion_mnist": ("mnist", "animal_mnist"),
    "animal_mnist": ("mnist", "fashion_mnist"),
    "cifar10": ("cifar100",),
    "cifar100": ("cifar10",),
}


def scores_from_summary(summary: PredictionSummary, stochastic: bool) -> dict[str, np.ndarray]:
    """The scores of `ood_scores` from a `PredictionSummary` of the same points."""
    log_p = summary.log_probs
    ent = entropy(log_p)
    out = {"msp": log_p.exp().max(-1).values.cpu().numpy(), "entropy": (-ent).cpu().numpy()}
    if stochastic:
        mi = (ent - summary.trajectory_entropy).clamp_min(0.0)
        out["mutual_information"] = (-mi).cpu().numpy()
    return out


@torch.no_grad()
def ood_scores(predictor: Predictor, x: torch.Tensor, batch_size: int = 1000) -> dict[str, np.ndarray]:
    """Per-example in-distribution scores (higher = more in-distribution), see the module docstring.

    Returns:
        ``{"msp": (N,), "entropy": (N,)}`` plus ``"mutual_information"`` for a stochastic predictor.
    """
    return scores_from_summary(predict_summary(predictor, x, batch_size), predictor.stochastic)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of separating in- (positive) from out-of-distribution examples by score.

    The area under the ROC curve equals the Mann-Whitney statistic P(s_in > s_out) + 0.5
    P(s_in = s_out) over all pairs; it is computed from the ranks (ties get their average
    rank) in integer arithmetic and divided once, so it is the exact value correctly rounded.
    sklearn's ``roc_auc_score`` sums trapezoids in floating point and agrees with it to about
    1e-16 (a test checks 1e-12); it is not used here because importing sklearn.metrics costs
    about 0.6 s in every process that evaluates.

    Args:
        in_scores, out_scores: 1-D scores, higher = more in-distribution.
    Returns:
        the AUROC in [0, 1].
    Raises:
        ValueError: an empty set or a NaN score (as sklearn).
    """
    s_in = np.asarray(in_scores, dtype=np.float64).ravel()
    s_out = np.asarray(out_scores, dtype=np.float64).ravel()
    n_in, n_out = len(s_in), len(s_out)
    if n_in == 0 or n_out == 0:
        raise ValueError("AUROC needs at least one in- and one out-of-distribution score")
    scores = np.concatenate([s_in, s_out])
    if np.isnan(scores).any():
        raise ValueError("AUROC scores contain NaN")
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    # Tie groups [start, end) of the sorted scores; twice the average 1-based rank of a group
    # is start + 1 + end, an integer.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    twice_rank = np.repeat(starts + 1 + ends, ends - starts)
    twice_rank_sum = int(twice_rank[order < n_in].sum(dtype=np.int64))
    # 2 U = 2 R_in - n_in (n_in + 1); AUROC = U / (n_in n_out), one exact division.
    return (twice_rank_sum - n_in * (n_in + 1)) / (2 * n_in * n_out)


def ood_detection(predictors: Sequence[Predictor], in_name: str, x_in: torch.Tensor,
                  out_sets: dict[str, torch.Tensor], batch_size: int = 1000,
                  in_summaries: dict[str, PredictionSummary] | None = None) -> list[dict]:
    """AUROC of every score of every predictor for in-distribution ``x_in`` vs each out set.

    Args:
        in_summaries: prediction name -> `PredictionSummary` of ``x_in`` already computed
            (the suite's clean pass); predictions not in it are run on ``x_in`` here.
    Returns:
        one dict per (out set, prediction, score): ``{in_dataset, out_dataset, prediction, score,
        auroc, n_in, n_out}``.
    """
    rows = []
    for p in predictors:
        known = (in_summaries or {}).get(p.name)
        s_in = (scores_from_summary(known, p.stochastic) if known is not None
                else ood_scores(p, x_in, batch_size))
        for out_name, x_out in out_sets.items():
            s_out = ood_scores(p, x_out, batch_size)
            for score in s_in:
                rows.append({"in_dataset": in_name, "out_dataset": out_name, "prediction": p.name,
                             "score": score, "auroc": auroc(s_in[score], s_out[score]),
                             "n_in": int(x_in.shape[0]), "n_out": int(x_out.shape[0])})
    return rows
