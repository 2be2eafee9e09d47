"""The sweep report, one module per part:

    build         `build_report` (report.md, report.html, figures) and `build_results`
                  (results.json / results.csv): reading the runs, the tables, the sections
    scorecard     the verdict of a comparison at one glance
    plots         the training-side figures (accuracy, forest plot, curves, cost)
    variance      the learned variances: figures and a verdict per run
    eval_tables   the test-time evaluation section's tables (and its own figures)
    eval_figures  the test-time evaluation figures of the sweep report
    style         the figure style every plot shares

The statistics are `dipnet.experiments.report.stats` (shared with the Hugging Face experiments).
The names of `build` are importable from here, as they were from the old single module
``dipnet.experiments.report``; the old modules beside it (``report_plots``, ``scorecard``, ...)
still name these.
"""

from __future__ import annotations

from dipnet._util.moved import forward_moved

#: The names of the old single-module ``dipnet.experiments.report``, now in `build`; nothing
#: in src/dipnet imports them from here (tests/test_import_graph.py checks).
_MOVED = {
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
__getattr__ = forward_moved(__name__, _MOVED)
__all__ = ["RunRecord", "load_runs", "build_results", "build_report", "flatten_evaluation",
           "summary_table", "markdown_to_html", "ReportPaths", "RESULTS_SCHEMA_VERSION"]
