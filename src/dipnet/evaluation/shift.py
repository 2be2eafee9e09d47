"""Accuracy on the user's own shifted test sets (``dipnet evaluate --shift-set``).

A shift set is an extra test distribution with the run's inputs and classes (a registered data
set's test split, or a .npz file): each prediction's accuracy, NLL and ECE on it, labelled with
the set's own name. `dipnet.experiments.assess.evaluate.load_extra_sets` loads and checks the sets.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from dipnet.evaluation.calibration import calibration_metrics
from dipnet.evaluation.predictors import Predictor, accuracy, nll, predict_summary


def shift_accuracy(predictors: Sequence[Predictor],
                   sets: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int = 500,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Accuracy, NLL and ECE of every prediction on every set.

    Args:
        predictors: the predictions (as in the suite).
        sets: set name -> (inputs, labels), on the predictors' device.
        batch_size: rows per forward pass.
        seed: seeds the sampled predictions' noise (one draw per set, reproducible).
    Returns:
        one row per (set, prediction): ``set``, ``prediction``, ``accuracy``, ``nll``, ``ece``,
        ``n_points``.
    """
    rows = []
    for name, (x, y) in sets.items():
        for p in predictors:
            torch.manual_seed(seed)
            lp = predict_summary(p, x, batch_size).log_probs
            rows.append({"set": name, "prediction": p.name, "accuracy": accuracy(lp, y),
                         "nll": nll(lp, y), "ece": calibration_metrics(lp, y)["ece"],
                         "n_points": int(len(y))})
    return rows

