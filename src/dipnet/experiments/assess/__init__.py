"""Assessing a finished run folder: `evaluate.evaluate_run` (the evaluation suite, written to
evaluation.json) and `certified.certify_run` (randomized-smoothing certificates, certify.json).
Both read the folder through `dipnet.experiments.run.runs.load_run` and the measures of the
`dipnet.evaluation` library, which itself never reads run folders."""
