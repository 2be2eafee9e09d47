"""Accuracy on the user's own shifted test sets (``dipnet evaluate --shift-set``).

A shift set is an extra test distribution with the run's inputs and classes (a registered data
set's test split, or a .npz file): each prediction's accuracy, NLL and ECE on it, labelled with
the set's own name. `dipnet.experiments.data.load_extra_set` loads and checks the sets.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .calibration import calibration_metrics
from .predictors import Predictor, accuracy, nll, predict_summary


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


def load_extra_sets(shift_sets: Sequence[str], ood_sets: Sequence[str], data: Any,
                    data_dir: str | None, parts: Sequence[str]
                    ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]],
                               dict[str, torch.Tensor]]:
    """Load the user-named sets of ``dipnet evaluate --shift-set / --ood-set`` for a run.

    Args:
        shift_sets, ood_sets: data set names or .npz paths.
        data: the run's `DatasetSplits` (input shape, classes).
        data_dir: where registered data sets' files are.
        parts: the suite's parts (``--ood-set`` needs the ``ood`` part).
    Returns:
        (name -> (x, y) shift sets, name -> x OOD sets), each labelled with its own name.
    Raises:
        UserError: a set that cannot be loaded or does not fit the run, a name given twice, or
            ``--ood-set`` while the ``ood`` part is not run.
    """
    from ..errors import UserError
    from ..experiments.data import load_extra_set

    if ood_sets and "ood" not in parts:
        raise UserError("--ood-set applies to the ood part, which --parts leaves out: add ood "
                        "to --parts or drop --ood-set")
    shift: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    ood: dict[str, torch.Tensor] = {}
    for kind, names, into in (("shift", shift_sets, shift), ("ood", ood_sets, ood)):
        for name in names:
            label, x, y = load_extra_set(name, kind, data.input_shape, data.num_classes, data_dir)
            if label in into:
                raise UserError(f"--{kind}-set: two sets are called {label!r}; rename a file")
            into[label] = (x, y) if kind == "shift" else x
    return shift, ood
