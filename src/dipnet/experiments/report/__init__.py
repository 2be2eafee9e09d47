"""The sweep report, one module per part:

    build         `build_report` (report.md, report.html, figures) and `build_results`
                  (results.json / results.csv): reading the runs, the tables, the sections
    scorecard     the verdict of a comparison at one glance
    plots         the training-side figures (accuracy, forest plot, curves, cost)
    variance      the learned variances: figures and a verdict per run
    eval_tables   the test-time evaluation section's tables (and its own figures)
    eval_figures  the test-time evaluation figures of the sweep report
    style         the figure style every plot shares
    stats         the one statistics module (shared with the Hugging Face experiments)

The names of `build` are importable from here, imported when first used (so that importing
`style` or `stats` does not pull in the whole report).
"""

from __future__ import annotations

from dipnet._util.lazy import lazy_names

#: The names exported from `build`.
_LAZY = {
    "RESULTS_SCHEMA_VERSION": "dipnet.experiments.report.build",
    "BASELINE": "dipnet.experiments.report.build",
    "RUN_METRICS": "dipnet.experiments.report.build",
    "RunRecord": "dipnet.experiments.report.build",
    "load_runs": "dipnet.experiments.report.build",
    "flatten_evaluation": "dipnet.experiments.report.build",
    "build_results": "dipnet.experiments.report.build",
    "write_results": "dipnet.experiments.report.build",
    "summary_table": "dipnet.experiments.report.build",
    "details": "dipnet.experiments.report.build",
    "markdown_to_html": "dipnet.experiments.report.build",
    "ReportPaths": "dipnet.experiments.report.build",
    "build_report": "dipnet.experiments.report.build",
}
__getattr__ = lazy_names(__name__, _LAZY)
__all__ = ["RunRecord", "load_runs", "build_results", "build_report", "flatten_evaluation",
           "summary_table", "markdown_to_html", "ReportPaths", "RESULTS_SCHEMA_VERSION"]
