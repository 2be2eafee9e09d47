"""Evaluation of trained models: attacks, corruptions, OOD detection, calibration, smoothness.

Every measure takes a `Predictor` (a deterministic or sampled prediction), so it applies to
DIPNet and to every baseline alike. The harness's
`dipnet.experiments.assess.evaluate.evaluate_run(run_dir)` runs the whole suite on a trained run
and writes ``evaluation.json``; the report's tables and plots of many of those are the
harness's too (`dipnet.experiments.report.eval_tables`). Submodules are imported on demand (the
corruption backend pulls OpenCV).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor", "deterministic_predictor", "sampled_predictor"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `dipnet.cli.evaluate` (the parser) imports without torch.
    if name in __all__:
        from dipnet.evaluation import predictors

        return getattr(predictors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
