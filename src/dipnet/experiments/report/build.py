"""The sweep report: results tables, paired tests against standard, plots, HTML.

:func:`build_report` reads what a sweep left on disk (``runs/*/config.yaml``, ``metrics.json``
and, when present, ``evaluation.json``), and writes beside it:

- ``results.json``: one record per run, one aggregated record per (condition, method), every
  paired test against standard, and the provenance;
- ``results.csv``: the same runs and aggregates as flat rows (``row_type`` = run | aggregate);
- ``report.md`` with PNGs under ``figures/``, and ``report.html``: the same content as one
  self-contained page (images embedded as base64), so it can be mailed or attached.

Everything is recomputed from the run folders, so ``dipnet report DIR`` after a partial or
resumed sweep always shows the current state. Accuracies are stored as fractions in the JSON
and shown as percentages in the tables.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from dipnet._util.fileio import atomic_write_text
from dipnet.experiments.sweep.grid import METHODS
from dipnet.experiments.report import eval_figures as report_eval
from dipnet.experiments.report import plots as report_plots
from dipnet.experiments.report import scorecard
from dipnet.experiments.report import variance as report_variance
from dipnet.experiments.report.html import details, markdown_to_html
from dipnet.experiments.report.load import (RunRecord, _method_order, _outside_the_sweep,
                                            _pert_order, _read_json, load_runs)
from dipnet.experiments.report.results import BASELINE, build_results, write_results
from dipnet.experiments.report.tables import (_PERT_LABEL, _cost_key, _cost_table, _eval_table,
                                              _paired_table, _variance_table, summary_table)

__all__ = ["build_report", "ReportPaths"]


def _figure_name(kind: str, *parts: str) -> str:
    """A figure's file name from its kind and the data set / model / condition it shows: a
    path keeps only its last part (``/data/good.npz`` -> ``good.npz``), and every character
    that does not belong in a file name becomes ``-`` (``pkg.mod:make`` -> ``pkg.mod-make``)."""
    clean = [re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(p)).name if "/" in str(p) else str(p))
             for p in parts]
    return "_".join([kind, *clean]) + ".png"


# --- the report ------------------------------------------------------------------------------
@dataclass
class ReportPaths:
    """Files written by :func:`build_report`."""

    markdown: Path
    html: Path
    results_json: Path
    results_csv: Path
    figures: list[Path] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)


def _forest_panels(results: dict[str, Any], ds: str, model: str
                   ) -> list[tuple[str, list[dict[str, Any]]]]:
    """(panel title, paired tests of test accuracy) per condition, plus the mean over the
    conditions when there are several (the paper's last column)."""
    tests = [t for t in results["paired_tests"] if t["dataset"] == ds and t["model"] == model
             and t["metric"] == "test_accuracy"]
    conds = sorted({t["train_perturbation"] for t in tests}, key=_pert_order)
    panels = [(f"train input: {_PERT_LABEL.get(c, c)}",
               sorted((t for t in tests if t["train_perturbation"] == c),
                      key=lambda t: _method_order(t["method"]))) for c in conds]
    means = [{"method": c["method"], **c["vs_standard"]} for c in results["condition_means"]
             if c["dataset"] == ds and c["model"] == model and c.get("vs_standard")]
    if means:
        panels.append(("mean over conditions",
                       sorted(means, key=lambda t: _method_order(t["method"]))))
    return panels


def _eval_tables(evs: dict[str, list[dict[str, Any]]]) -> str:
    """The per-part tables of `eval_tables`, without its figures (the report draws
    its own, in the fixed method colours and at page width)."""
    try:
        from dipnet.experiments.report.eval_tables import render_section
    except ImportError:
        return ""
    try:
        return render_section(dict(evs), None)  # None: the tables only, no figure drawn
    except Exception as err:  # a bug there must not lose the whole report
        return f"(the evaluation tables could not be rendered: {err})"


def _evaluation_section(records: Sequence[RunRecord], results: dict[str, Any], ds: str,
                        model: str, fig_dir: Path, out_dir: Path
                        ) -> tuple[list[str], list[Path]]:
    """Markdown lines and figures of the test-time evaluation of one data set and model."""
    lines: list[str] = []
    figs: list[Path] = []
    evald = [r for r in records if r.evaluation is not None and r.group[:2] == (ds, model)]
    if not evald:
        return lines, figs
    lines += ["", f"## Test-time evaluation ({ds} / {model})", "",
              f"{len(evald)} of {sum(r.group[:2] == (ds, model) for r in records)} runs have an "
              "evaluation.json (`dipnet evaluate`). Headline numbers first, in % where they "
              "are rates (accuracy, calibration error, AUROC); PGD with EOT for the sampled "
              "prediction. Each cell: mean ± std over seeds, with the paired t-test p-value "
              "against standard (same seeds); every scalar is in results.json under `eval/`."]
    order = list(METHODS)
    for pert in sorted({r.perturbation for r in evald}, key=_pert_order):
        evs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in evald:
            if r.perturbation == pert and r.evaluation is not None:
                evs[r.method].append(r.evaluation)
        title = f"{ds} / {model}, train input {_PERT_LABEL.get(pert, pert)}"
        lines += ["", f"### Train input: {_PERT_LABEL.get(pert, pert)}"]
        plots = [
            (report_eval.plot_attacks, "attacks", "accuracy under attack"),
            (report_eval.plot_noise_accuracy, "noise", "accuracy under test-time Gaussian noise"),
            (report_eval.plot_reliability, "reliability", "reliability diagrams"),
            (report_eval.plot_calibration_error, "ece", "expected calibration error"),
            (report_eval.plot_ood, "ood", "OOD detection AUROC"),
            (report_eval.plot_smoothness, "smoothness", "smoothness measures"),
            (report_eval.plot_corruptions, "corruptions", "accuracy under corruption"),
            (report_eval.plot_certified, "certified", "certified accuracy beside PGD L2"),
        ]
        for fn, name, alt in plots:
            try:
                fp = fn(dict(evs), title,
                        fig_dir / _figure_name(f"eval_{name}", ds, model, pert), order)
            except Exception as err:  # one odd evaluation.json must not lose the report
                lines += ["", f"(figure '{alt}' could not be drawn: {err})"]
                continue
            if fp is not None:
                figs.append(fp)
                lines += ["", f"![{alt}]({fp.relative_to(out_dir).as_posix()})"]
            if name == "noise" and fp is not None and report_eval.noise_source(evs) != "sigma":
                lines += ["", "Test-time Gaussian noise is read from the `gaussian_noise` "
                          "corruption (imagecorruptions adds N(0, σ²) per colour channel with "
                          "σ = 0.08, 0.12, 0.18 at severities 1-3; grey images are stacked to "
                          "three channels and averaged back, so their effective σ is σ/√3)."]
            if name == "certified" and fp is not None:
                lines += ["", *report_eval.certified_check(dict(evs))]
            if name == "reliability" and fp is None:
                lines += ["", "_No reliability diagram: these evaluation.json files record "
                          "the ECE but not its per-bin confidence and accuracy "
                          "(`calibration.PREDICTION.reliability`)._"]
        # The figures first; the long tables below them, collapsed.
        lines += details("Every headline metric per method (mean ± std over seeds, p against "
                         "standard)", _eval_table(results, ds, model, pert))
        tables = _eval_tables(evs)
        if tables:
            lines += details("The evaluation's own tables, part by part", tables)
    return lines, figs


def _variance_section(records: Sequence[RunRecord], results: dict[str, Any], ds: str,
                      model: str, fig_dir: Path, out_dir: Path) -> tuple[list[str], list[Path]]:
    """Markdown and figures of the learned variances of one data set and model: a verdict
    line per run, trajectories from init, final histograms, data vs barrier gradients."""
    lines: list[str] = []
    figs: list[Path] = []
    mine = [r for r in records if r.group[:2] == (ds, model)]
    vruns = [(r, report_variance.read_variance_run(r.method, r.seed, r.metrics, r.config))
             for r in mine]
    vruns = [(r, v) for r, v in vruns if v is not None]
    if not vruns and not any(v["dataset"] == ds and v["model"] == model
                             for v in results["variances"]):
        return lines, figs
    lines += ["", f"## Learned variance per layer ({ds} / {model})", "",
              "λ is the per-feature variance of each projection (named by the layer it feeds). "
              "Whether it learned anything is the first question about a DIPNet run: if it "
              "stays at its initial value, the run is fixed Gaussian noise. Each line below "
              "describes the profile the variances ended with across layers and features "
              "against the one they started from; 'barely moved' means they moved under "
              f"{100 * report_variance.MOVED_THRESHOLD:.0f}% (averaged over features, then "
              "layers) and neither the features nor the layer profile spread by a factor "
              f"{report_variance.SPREAD_THRESHOLD:g} beyond the start's (a relative start "
              "already differs between layers)."]
    order = list(METHODS)
    for pert in sorted({r.perturbation for r, _ in vruns}, key=_pert_order):
        group = [(r, v) for r, v in vruns if r.perturbation == pert]
        title = f"{ds} / {model}, train input {_PERT_LABEL.get(pert, pert)}"
        lines += ["", f"### Train input: {_PERT_LABEL.get(pert, pert)}", ""]
        for r, v in sorted(group, key=lambda rv: (_method_order(rv[0].method), rv[0].seed)):
            lines.append(report_variance.verdict_line(v, f"{r.method}, seed {r.seed} "
                                                         f"(`{r.name}`)"))
        runs = [v for _, v in group]
        legacy = [v for v in runs if v.layout == "legacy"]
        for fn, name, alt in (
                (report_variance.plot_trajectories, "trajectory", "λ per layer over epochs"),
                (report_variance.plot_final_histograms, "histogram",
                 "final per-feature histogram of λ"),
                (report_variance.plot_gradients, "gradient",
                 "gradient of the data term and of the barrier w.r.t. λ")):
            fp = fn(runs, title, fig_dir / _figure_name(f"variance_{name}", ds, model, pert), order)
            if fp is not None:
                figs.append(fp)
                lines += ["", f"![{alt}]({fp.relative_to(out_dir).as_posix()})"]
        if legacy:
            lines += ["", f"_{len(legacy)} run(s) recorded only the per-layer mean of λ "
                      "(older metrics.json): no per-feature band, histogram or gradients "
                      "for them._"]
    if any(v["dataset"] == ds and v["model"] == model for v in results["variances"]):
        lines += ["", "Final mean λ per layer, over seeds:", "",
                  _variance_table(results, ds, model)]
    return lines, figs


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None,
                 title: str | None = None) -> ReportPaths:
    """Build the whole report for the sweep in ``sweep_dir``.

    Takes the sweep folder (holding ``runs/``), an optional output folder (default: the sweep
    folder) and an optional title. Writes results.json, results.csv, report.md, report.html and
    figures/*.png; returns their paths and the results dict. Raises UserError when no run is
    found.
    """
    sweep_dir = Path(sweep_dir)
    records, unfinished = load_runs(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    prov = _read_json(sweep_dir / "provenance.json")
    sweep_cfg, sweep_problems = _read_sweep_yaml(sweep_dir)
    unreadable = [f"runs/{r.name}/evaluation.json ({r.evaluation_error})" for r in records
                  if r.evaluation_error] + sweep_problems
    records, strays = _outside_the_sweep(records, sweep_cfg)
    results = build_results(records, prov, sweep_cfg)
    results["unfinished_runs"] = unfinished
    results["scorecards"] = [scorecard.build(results, ds, m, _cost_key(results, ds, m)) for ds, m
                             in sorted({(a["dataset"], a["model"]) for a in results["aggregates"]})]
    results["unreadable_files"] = unreadable
    results["left_out_runs"] = strays
    jpath, cpath = write_results(results, out)

    fig_dir = out / "figures"
    figs: list[Path] = []
    pairs = sorted({(r.group[0], r.group[1]) for r in records})
    title = title or ("DIPNet comparison: " + ", ".join(f"{d} / {m}" for d, m in pairs)
                      if pairs else "DIPNet comparison")
    md = _report_head(title, records, results, sweep_cfg)
    for ds, model in pairs:
        for part in (_accuracy_section, _curves_section, _variance_section, _cost_section,
                     _evaluation_section):
            lines, drawn = part(records, results, ds, model, fig_dir, out)
            md += lines
            figs += drawn
    md += _provenance_section(prov, sorted({r.seed for r in records}), sweep_dir, sweep_cfg)
    text = "\n".join(md) + "\n"
    mpath, hpath = out / "report.md", out / "report.html"
    atomic_write_text(mpath, text)
    atomic_write_text(hpath, markdown_to_html(text, out, title))
    return ReportPaths(mpath, hpath, jpath, cpath, figs, results)


def _read_sweep_yaml(sweep_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The sweep's sweep.yaml (None when absent or unreadable), and what was wrong with it."""
    if not (sweep_dir / "sweep.yaml").is_file():
        return None, []
    try:
        sweep_cfg = yaml.safe_load((sweep_dir / "sweep.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        return None, [f"sweep.yaml ({str(err).splitlines()[0]})"]
    if sweep_cfg is not None and not isinstance(sweep_cfg, dict):
        return None, ["sweep.yaml (not a mapping of sweep settings)"]
    return sweep_cfg, []


def _report_head(title: str, records: Sequence[RunRecord], results: dict[str, Any],
                 sweep_cfg: dict[str, Any] | None) -> list[str]:
    """The title, the scorecards (the verdict first), what ran, and what was left out."""
    unfinished, unreadable = results["unfinished_runs"], results["unreadable_files"]
    strays = results["left_out_runs"]
    md: list[str] = [f"# {title}", ""]
    for card in results["scorecards"]:
        md += [f"## Scorecard ({card['dataset']} / {card['model']})", "",
               scorecard.markdown(card), ""]
    methods = sorted({r.method for r in records}, key=_method_order)
    seeds = sorted({r.seed for r in records})
    conds = sorted({r.perturbation for r in records}, key=_pert_order)
    md += [f"{len(records)} finished runs: methods {', '.join(methods)}; seeds {seeds}; "
           f"training-input conditions {', '.join(_PERT_LABEL.get(c, c) for c in conds)}. "
           "Accuracy is on the clean test set (never used for tuning or early stopping); the "
           "validation split is carved from the training set. Paired tests compare each method "
           "with standard training run on the same seed (`*`: paired t-test p < 0.05 with at least "
           "3 pairs; \"n/a (constant difference)\": every pair differs by the same amount, so "
           "no test is defined)."]
    if unfinished:
        md += ["", f"**{len(unfinished)} run(s) not finished** (running, interrupted or failed) "
               f"and left out: {', '.join(unfinished[:10])}"
               f"{' …' if len(unfinished) > 10 else ''}."]
    if unreadable:
        md += ["", f"**{len(unreadable)} file(s) could not be read**, so what they hold is not "
               f"in this report (fix or delete them, then run `dipnet report` again): "
               f"{'; '.join(unreadable[:10])}{' …' if len(unreadable) > 10 else ''}."]
    if strays:
        md += ["", f"**{len(strays)} run(s) of another data set or model** than the sweep's "
               f"({sweep_cfg.get('dataset')} / {sweep_cfg.get('model', 'mlp')}) are in its "
               f"folder and left out: {', '.join(strays[:10])}"
               f"{' …' if len(strays) > 10 else ''}."]
    for note in results["notes"]:
        md += ["", f"> {note}"]
    return md


def _accuracy_section(records: Sequence[RunRecord], results: dict[str, Any], ds: str,
                      model: str, fig_dir: Path, out_dir: Path) -> tuple[list[str], list[Path]]:
    """Clean test accuracy of one data set and model: the summary table, the accuracy and
    forest plots, and the paired differences per condition."""
    sub = [a for a in results["aggregates"] if a["dataset"] == ds and a["model"] == model]
    sub_conds = sorted({a["train_perturbation"] for a in sub}, key=_pert_order)
    md = ["", f"## Clean test accuracy ({ds} / {model})", ""]
    figs: list[Path] = []
    if len(sub_conds) > 1:
        modes = sorted({r.get("perturbation_mode", "fresh") for r in results["runs"]
                        if r["dataset"] == ds and r["model"] == model
                        and r["train_perturbation"] != "none"})
        how = {"fixed": "the training set perturbed ONCE before training (FGSM against a "
                        "clean reference model)",
               "fresh": "perturbations drawn anew for every batch"}
        md += ["The paper's protocol (its Table 1): training inputs perturbed by Gaussian "
               "noise (σ = 0.2) or FGSM (ε = 0.2 on [0, 1] pixels), accuracy on the clean "
               "test set; the last columns compare the mean over conditions with "
               "standard's, paired by seed. Perturbation mode: "
               + "; ".join(f"{m_} ({how.get(m_, m_)})" for m_ in modes) + ".", ""]
    md += [summary_table(results, ds, model), ""]
    sub_methods = sorted({a["method"] for a in sub}, key=_method_order)
    p = report_plots.plot_accuracy(sub, sub_methods, sub_conds, f"{ds} / {model}",
                                   fig_dir / _figure_name("accuracy", ds, model))
    figs.append(p)
    md += [f"![test accuracy per method]({p.relative_to(out_dir).as_posix()})", ""]
    p = report_plots.plot_forest(_forest_panels(results, ds, model), f"{ds} / {model}",
                                 fig_dir / _figure_name("forest", ds, model))
    if p:
        figs.append(p)
        md += ["![difference from standard with 95% confidence intervals]"
               f"({p.relative_to(out_dir).as_posix()})", ""]
    md += ["Paired differences against standard, per condition (test accuracy, percentage "
           "points; 95% CI: Student-t interval of the mean paired difference):", "",
           _paired_table(results, ds, model, "test_accuracy", 100.0, "pp")]
    return md, figs


def _curves_section(records: Sequence[RunRecord], results: dict[str, Any], ds: str,
                    model: str, fig_dir: Path, out_dir: Path) -> tuple[list[str], list[Path]]:
    """Learning curves of one data set and model, one figure per condition, and the final
    validation accuracy paired against standard."""
    sub_conds = sorted({a["train_perturbation"] for a in results["aggregates"]
                        if a["dataset"] == ds and a["model"] == model}, key=_pert_order)
    md = ["", f"## Learning curves ({ds} / {model})", "",
          "Left: the data term of each method's loss (DIPNet: its NLL part alone, so it "
          "compares with the others' cross-entropy); middle: validation accuracy; right, "
          "where present: DIPNet's barrier (and stability) terms as added to its loss.", ""]
    figs: list[Path] = []
    for c in sub_conds:
        hist = report_plots.histories_by_method(
            [r for r in records if r.group == (ds, model, c)])
        p2 = report_plots.plot_curves(
            hist, sorted(hist, key=_method_order),
            f"{ds} / {model}, train input {_PERT_LABEL.get(c, c)}",
            fig_dir / _figure_name("curves", ds, model, c))
        if p2:
            figs.append(p2)
            md += [f"![learning curves, train input {c}]({p2.relative_to(out_dir).as_posix()})",
                   ""]
    md += details("Validation accuracy after the last epoch, paired against standard "
                  "(percentage points)",
                  _paired_table(results, ds, model, "val_accuracy", 100.0, "pp"))
    return md, figs


def _cost_section(records: Sequence[RunRecord], results: dict[str, Any], ds: str,
                  model: str, fig_dir: Path, out_dir: Path) -> tuple[list[str], list[Path]]:
    """Compute cost of one data set and model: the cost table and its plot."""
    sub = [a for a in results["aggregates"] if a["dataset"] == ds and a["model"] == model]
    sub_conds = sorted({a["train_perturbation"] for a in sub}, key=_pert_order)
    sub_methods = sorted({a["method"] for a in sub}, key=_method_order)
    kinds = sorted({str(r.metrics.get("peak_memory_kind")) for r in records
                    if r.group[:2] == (ds, model) and r.metrics.get("peak_memory_kind")})
    ck = _cost_key(results, ds, model)
    cpu = ck.startswith("train_cpu")
    md = ["", f"## Compute cost ({ds} / {model})", "",
          ("Per training epoch (validation excluded): CPU seconds of the process (the "
           "steadier figure on a shared machine: it does not count time other jobs held "
           "the cores) and wall seconds" if cpu else
           "Per training epoch (validation excluded): wall seconds (these runs did not "
           "record CPU time)")
          + "; then the whole epoch including the validation "
          "pass (Monte Carlo for sampled predictions), peak memory, and the parameter "
          "count (extra = DIPNet's variances). 'x standard' is the ratio of means; the "
          f"paired t-test is on {'CPU' if cpu else 'wall'} time per epoch (CPU time is "
          "shown where the runs recorded it). Wall times on a shared machine are noisy: "
          "compare ratios. The training-input condition adds its "
          "own cost (FGSM: one more forward/backward per step)."
          + (f" Peak memory is the {kinds[0]}: with a data set and torch in the process "
             "it is dominated by that baseline, not by the model." if len(kinds) == 1
             else ""), "",
          _cost_table(results, ds, model)]
    p4 = report_plots.plot_cost(
        sub, sub_methods, sub_conds, ck,
        "training " + ("CPU" if cpu else "wall") + " time per epoch",
        f"{ds} / {model}", fig_dir / _figure_name("cost", ds, model), BASELINE)
    if not p4:
        return md, []
    return md + ["", f"![compute cost]({p4.relative_to(out_dir).as_posix()})"], [p4]


def _provenance_section(prov: dict[str, Any] | None, seeds: list[int], sweep_dir: Path,
                        sweep_cfg: dict[str, Any] | None) -> list[str]:
    """What ran, where and with which software, and how to rebuild the report."""
    md = ["", "## Provenance", ""]
    invocations = (prov or {}).get("invocations") or []
    if invocations:
        last = invocations[-1]
        if len(invocations) == 1:
            md += [f"- command: `{last.get('command')}`",
                   f"- date: {last.get('date')}; git commit: `{last.get('git_commit')}`"]
        else:
            md += ["- commands, in order (a later one reuses the finished runs):"]
            md += [f"  - `{inv.get('command')}` ({inv.get('date')}, git commit "
                   f"`{(inv.get('git_commit') or '?')[:12]}`)" for inv in invocations]
        md += [f"- hardware: {last.get('cpu')} ({last.get('cpu_count')} logical CPUs), "
               f"GPU: {last.get('cuda') or 'none'}; {last.get('platform')}",
               f"- software: Python {last.get('python')}, torch {last.get('torch')}, numpy "
               f"{last.get('numpy')}, dipnet {last.get('dipnet')}"]
    md += [f"- seeds: {seeds}",
           "- rebuild this report: `dipnet report " + str(sweep_dir) + "`"]
    if sweep_cfg:
        md += details("Sweep configuration of the last command (sweep.yaml, re-runnable with "
                      "dipnet compare --config)",
                      "```yaml\n" + yaml.safe_dump(sweep_cfg, sort_keys=False).strip() + "\n```")
    return md
