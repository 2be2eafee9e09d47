"""Evaluation of trained models: attacks, corruptions, OOD detection, calibration, smoothness.

Every measure takes a `Predictor` (a deterministic or sampled prediction), so it applies to
DIPNet and to every baseline alike. The harness's
`dipnet.experiments.assess.evaluate.evaluate_run(run_dir)` runs the whole suite on a trained run
and writes ``evaluation.json``; the report's tables and plots of many of those are the
harness's too (`dipnet.experiments.report.eval_tables`). Submodules are imported on demand (the
corruption backend pulls OpenCV).
"""

from __future__ import annotations

from dipnet._util.lazy import lazy_names

__all__ = ["Predictor", "deterministic_predictor", "sampled_predictor"]

# Lazy, so that `dipnet.cli.evaluate` (the parser) imports without torch.
__getattr__ = lazy_names(__name__, {name: "dipnet.evaluation.predictors" for name in __all__})
