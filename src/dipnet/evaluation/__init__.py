"""Evaluation of trained models: attacks, corruptions, OOD detection, calibration, smoothness.

Every measure takes a `Predictor` (a deterministic or sampled prediction), so it applies to
DIPNet and to every baseline alike. `dipnet.evaluation.suite.evaluate_run(run_dir)` runs the
whole suite on a trained run and writes ``evaluation.json``; `report.render_section` turns many
of those into the report's tables and plots. Submodules are imported on demand (the
corruption backend pulls OpenCV).
"""

from .predictors import Predictor, deterministic_predictor, sampled_predictor

__all__ = ["Predictor", "deterministic_predictor", "sampled_predictor"]
