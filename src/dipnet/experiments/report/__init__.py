"""The sweep report, one module per part:

    build         `build_report`: report.md, report.html and the figures, section by section
    load          `load_runs`: the sweep folder's runs as `RunRecord`s; `flatten_evaluation`
    results       `build_results` / `write_results`: results.json and results.csv
    tables        the markdown tables (`summary_table`, paired tests, cost, variances)
    html          `markdown_to_html`: one self-contained page
    scorecard     the verdict of a comparison at one glance
    plots         the training-side figures (accuracy, forest plot, curves, cost)
    variance      the learned variances: figures and a verdict per run
    eval_tables   the test-time evaluation section's tables (and its own figures)
    eval_figures  the test-time evaluation figures of the sweep report
    style         the figure style every plot shares
    stats         the one statistics module (shared with the Hugging Face experiments)

The main names of these are importable from here, imported when first used (so that importing
`style` or `stats` does not pull in the whole report).
"""

from __future__ import annotations

from dipnet._util.lazy import lazy_names

#: The names exported here, and the module that defines each.
_LAZY = {
    "RESULTS_SCHEMA_VERSION": "dipnet.experiments.report.results",
    "BASELINE": "dipnet.experiments.report.results",
    "RUN_METRICS": "dipnet.experiments.report.results",
    "RunRecord": "dipnet.experiments.report.load",
    "load_runs": "dipnet.experiments.report.load",
    "flatten_evaluation": "dipnet.experiments.report.load",
    "build_results": "dipnet.experiments.report.results",
    "write_results": "dipnet.experiments.report.results",
    "summary_table": "dipnet.experiments.report.tables",
    "details": "dipnet.experiments.report.html",
    "markdown_to_html": "dipnet.experiments.report.html",
    "ReportPaths": "dipnet.experiments.report.build",
    "build_report": "dipnet.experiments.report.build",
}
__getattr__ = lazy_names(__name__, _LAZY)
__all__ = ["RunRecord", "load_runs", "build_results", "build_report", "flatten_evaluation",
           "summary_table", "markdown_to_html", "ReportPaths", "RESULTS_SCHEMA_VERSION"]
