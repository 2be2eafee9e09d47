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

import base64
import csv
import html
import io
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from dipnet.errors import UserError
from dipnet._util.fileio import atomic_write_text
from dipnet.experiments.report.stats import (format_mean_std, format_paired_p, low_power_note,
                                             paired_test, summarize)
from dipnet.experiments.sweep.grid import METHODS, PERTURBATIONS
from dipnet.experiments.report import eval_figures as report_eval
from dipnet.experiments.report import plots as report_plots
from dipnet.experiments.report import scorecard
from dipnet.experiments.report import variance as report_variance
from dipnet.experiments.report.eval_figures import readable_metric

__all__ = ["RunRecord", "load_runs", "build_results", "build_report", "flatten_evaluation",
           "summary_table", "markdown_to_html", "ReportPaths", "RESULTS_SCHEMA_VERSION"]

RESULTS_SCHEMA_VERSION = 1
BASELINE = "standard"
#: Per-run scalars aggregated over seeds: (key in metrics.json, label, unit scale, higher is better)
RUN_METRICS: tuple[tuple[str, str, float, bool | None], ...] = (
    ("test_accuracy", "test accuracy (%)", 100.0, True),
    ("test_accuracy_deterministic", "test accuracy, deterministic prediction (%)", 100.0, True),
    ("test_accuracy_mc", "test accuracy, Monte Carlo prediction (%)", 100.0, True),
    ("val_accuracy", "validation accuracy (%)", 100.0, True),
    ("final_train_loss", "final training loss", 1.0, False),
    ("train_cpu_per_epoch_s", "training CPU time per epoch (s)", 1.0, False),
    ("train_time_per_epoch_s", "training wall time per epoch (s)", 1.0, False),
    ("time_per_epoch_s", "time per epoch incl. validation (s)", 1.0, False),
    ("peak_memory_mb", "peak memory (MB)", 1.0, False),
    ("wall_clock_s", "wall clock (s)", 1.0, False),
)
_PERT_LABEL = {"none": "none", "gaussian": "Gaussian", "fgsm": "FGSM"}


@dataclass
class RunRecord:
    """One finished run as read from disk: its folder, config, metrics and evaluation."""

    name: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    evaluation: dict[str, Any] | None = None
    evaluation_error: str = ""  # why an evaluation.json that is there could not be read

    @property
    def method(self) -> str:
        return str(self.metrics.get("method") or self.config.get("method"))

    @property
    def seed(self) -> int:
        return int(self.metrics.get("seed", self.config.get("seed", 0)))

    @property
    def perturbation(self) -> str:
        return str(self.metrics.get("train_perturbation")
                   or self.config.get("train_perturbation") or "none")

    @property
    def group(self) -> tuple[str, str, str]:
        """(dataset, model, train perturbation): runs in a group are directly comparable."""
        return (str(self.metrics.get("dataset") or self.config.get("dataset")),
                str(self.metrics.get("model") or self.config.get("model")),
                self.perturbation)


def _read_json(path: Path) -> dict[str, Any] | None:
    return _read_json_why(path)[0]


def _read_json_why(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object in ``path``, "") or (None, why it could not be read; "" if missing)."""
    if not path.exists():
        return None, ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        return None, f"cannot be read: {err.strerror}"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"not valid JSON: {err}"
    return (data, "") if isinstance(data, dict) else (None, "not a JSON object")


def load_runs(sweep_dir: str | Path) -> tuple[list[RunRecord], list[str]]:
    """Read every finished run under ``sweep_dir/runs`` (or ``sweep_dir`` itself).

    Returns (records sorted by group, method and seed; names of run folders that are not
    finished: still running, interrupted or failed). Raises UserError when the folder holds no
    run at all.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the --out folder of a dipnet compare")
    runs_dir = root / "runs" if (root / "runs").is_dir() else root
    records: list[RunRecord] = []
    unfinished: list[str] = []
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        metrics = _read_json(d / "metrics.json")
        if metrics is None or metrics.get("status") != "finished":
            if (d / "config.yaml").is_file() or (d / "metrics.json").is_file():
                unfinished.append(d.name)
            continue
        config: dict[str, Any] = {}
        if (d / "config.yaml").is_file():
            try:
                config = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                config = {}
        evaluation, problem = _read_json_why(d / "evaluation.json")
        certified = _read_json(d / "certify.json")  # `dipnet certify`: the report's panel
        if evaluation is not None and certified is not None:
            evaluation["certified"] = {k: certified.get(k) for k in (
                "certified_accuracy", "abstention_rate", "mean_radius", "points")}
        records.append(RunRecord(d.name, d, config, metrics, evaluation, problem))
    if not records and not unfinished:
        raise UserError(f"no runs found under {runs_dir}: run dipnet compare --out {root} "
                        f"first")
    records.sort(key=lambda r: (r.group, _method_order(r.method), r.seed))
    return records, unfinished


def _outside_the_sweep(records: list[RunRecord], sweep_cfg: Any
                       ) -> tuple[list[RunRecord], list[str]]:
    """Split off the runs whose data set or model is not the sweep's (``sweep.yaml``): a run
    copied or trained into the folder by hand is not part of the comparison. Returns (kept,
    ``"name (dataset / model)"`` of each run left out); everything is kept without a
    readable sweep.yaml."""
    if not isinstance(sweep_cfg, dict) or not sweep_cfg.get("dataset"):
        return records, []
    want = (str(sweep_cfg["dataset"]), str(sweep_cfg.get("model") or "mlp"))
    kept = [r for r in records if r.group[:2] == want]
    strays = [f"{r.name} ({r.group[0]} / {r.group[1]})" for r in records if r.group[:2] != want]
    return kept, strays


def _figure_name(kind: str, *parts: str) -> str:
    """A figure's file name from its kind and the data set / model / condition it shows: a
    path keeps only its last part (``/data/good.npz`` -> ``good.npz``), and every character
    that does not belong in a file name becomes ``-`` (``pkg.mod:make`` -> ``pkg.mod-make``)."""
    clean = [re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(p)).name if "/" in str(p) else str(p))
             for p in parts]
    return "_".join([kind, *clean]) + ".png"


def _method_order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _pert_order(pert: str) -> int:
    return PERTURBATIONS.index(pert) if pert in PERTURBATIONS else len(PERTURBATIONS)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)) and math.isfinite(float(x)):
        return float(x)
    return None


# --- evaluation.json -> flat scalars ---------------------------------------------------------
_ID_NUMERIC = {"eps", "epsilon", "severity", "steps", "samples", "m", "radius"}
# Bookkeeping, not outcomes: sizes, settings, timings, versions.
_SKIP_KEY = re.compile(r"(time|seconds|wall|_s$|^n_|_points$|^k$|restarts|eot_samples|"
                       r"ece_bins|settings|stderr|schema_version|^seed$|environment|notes|"
                       r"predictions)")
#: The evaluation scalars shown in the report's own table (all of them go to results.json).
_HEADLINE = re.compile(
    r"^(clean/[^/]+/accuracy|calibration/[^/]+/ece|attacks/pgd/.*/eps=(?!0\.0/).*/accuracy"
    r"|corruptions/mean/[^/]+/accuracy|ood/.*/auroc"
    r"|smoothness/[^/]+/(loss_grad_norm|lipschitz_adversarial|input_hessian_spectral)/mean"
    r"|smoothness/[^/]+/weight_hessian_(trace|top_eigenvalue))$")


def flatten_evaluation(ev: dict[str, Any] | None) -> dict[str, float]:
    """Flatten an evaluation.json into ``{"section/…/key": value}`` numeric scalars.

    Dicts are walked by key; a list of dicts (attacks, corruptions, OOD pairs) becomes one name
    per entry built from its identifying fields (strings and eps/severity-like numbers) and one
    scalar per remaining numeric field. Timing fields are left out (they are not outcomes).
    """
    out: dict[str, float] = {}

    def walk(obj: Any, prefix: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if _SKIP_KEY.search(str(k)):
                    continue
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        elif isinstance(obj, list):
            for item in obj:
                if not isinstance(item, dict):
                    continue
                ids = [f"{k}={v}" if k in _ID_NUMERIC else str(v) for k, v in item.items()
                       if isinstance(v, str) or (k in _ID_NUMERIC and _num(v) is not None)]
                base = "/".join([prefix, *ids]) if prefix else "/".join(ids)
                for k, v in item.items():
                    if k in _ID_NUMERIC or isinstance(v, str) or _SKIP_KEY.search(str(k)):
                        continue
                    walk(v, f"{base}/{k}")
        else:
            val = _num(obj)
            if val is not None and prefix:
                out[prefix] = val

    if ev:
        walk({k: v for k, v in ev.items() if k not in ("config", "provenance", "suite",
                                                         "run_dir", "meta")}, "")
    return out


def _mean_hist(hist: list[Any], key: str) -> float | None:
    vals = [_num(h.get(key)) for h in hist if isinstance(h, dict)]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _run_row(r: RunRecord) -> dict[str, Any]:
    m = r.metrics
    hist = m.get("history") or []
    final_loss = _num(hist[-1].get("train_loss")) if hist and isinstance(hist[-1], dict) else None
    row: dict[str, Any] = {
        "run": r.name, "dataset": r.group[0], "model": r.group[1], "train_perturbation":
        r.perturbation, "perturbation_mode": r.config.get("perturbation_mode") or "fresh",
        "method": r.method, "seed": r.seed,
        "epochs": r.config.get("epochs", len(hist)), "max_train": r.config.get("max_train"),
        "test_accuracy": _num(m.get("test_accuracy")),
        "test_accuracy_deterministic": _num(m.get("test_accuracy_deterministic")),
        "test_accuracy_mc": _num(m.get("test_accuracy_mc")),
        "prediction": m.get("prediction"),
        "val_accuracy": _num(m.get("val_accuracy")),
        "final_train_loss": final_loss,
        "time_per_epoch_s": _num(m.get("time_per_epoch_s")),
        "train_time_per_epoch_s": _mean_hist(hist, "train_time_s"),
        "train_cpu_per_epoch_s": _mean_hist(hist, "train_cpu_time_s"),
        "peak_memory_mb": _num(m.get("peak_memory_mb")),
        "wall_clock_s": _num(m.get("wall_clock_s")),
        "num_params": m.get("num_params"), "extra_params": m.get("extra_params"),
        "evaluated": r.evaluation is not None,
        # "not evaluated" and "evaluated, but its evaluation.json cannot be read" differ
        "evaluation_error": r.evaluation_error or None,
    }
    for k, v in flatten_evaluation(r.evaluation).items():
        row[f"eval/{k}"] = v
    return row


def _variances(m: dict[str, Any]) -> dict[str, float]:
    """Per-layer mean learned variance from metrics.json (tolerates a few layouts)."""
    raw = m.get("variances") or {}
    out: dict[str, float] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            if isinstance(v, dict):
                v = v.get("mean")
            if _num(v) is not None:
                out[str(k)] = float(v)
    return out


def build_results(records: Sequence[RunRecord], provenance: dict[str, Any] | None = None,
                  sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Aggregate runs over seeds and test every method against standard, paired by seed.

    Takes the run records (from :func:`load_runs`) and optional provenance / sweep dicts to
    embed. Returns the ``results.json`` dict: ``runs`` (one flat row per run), ``aggregates``
    (per dataset, model, condition and method: a Summary per metric), ``paired_tests`` (per
    metric, method != standard, condition, plus the mean over conditions like the paper's
    last column), ``variances`` (dipnet: per-layer learned variance over seeds), ``notes``.
    """
    rows = [_run_row(r) for r in records]
    aggregates, tests = _aggregates_and_tests(rows)
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "baseline": BASELINE,
        "accuracy_unit": "fraction (tables show %)",
        "runs": rows,
        "aggregates": aggregates,
        "paired_tests": tests,
        "condition_means": _condition_means(rows),
        "variances": _variance_rows(records),
        "variance_verdicts": _variance_verdicts(records),
        "notes": _results_notes(aggregates, tests),
        "sweep": sweep,
        "provenance": provenance,
    }


def _aggregates_and_tests(rows: list[dict[str, Any]]
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per (dataset, model, condition, method): the Summary of every metric over seeds, and
    the paired test of every metric against standard on the seeds both have."""
    by_group: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        key = (row["dataset"], row["model"], row["train_perturbation"])
        by_group[key][row["method"]].append(row)
    metric_keys = [k for k, *_ in RUN_METRICS] + sorted(
        {k for row in rows for k in row if k.startswith("eval/")})
    aggregates: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []
    for group in sorted(by_group, key=lambda g: (g[0], g[1], _pert_order(g[2]))):
        methods = by_group[group]
        base = {row["seed"]: row for row in methods.get(BASELINE, [])}
        for method in sorted(methods, key=_method_order):
            aggregates.append(_aggregate(group, method, methods[method], metric_keys))
            if method != BASELINE and base:
                tests += _paired_rows(group, method, methods[method], base, metric_keys)
    return aggregates, tests


def _aggregate(group: tuple, method: str, mrows: list[dict[str, Any]],
               metric_keys: Sequence[str]) -> dict[str, Any]:
    agg: dict[str, Any] = {"dataset": group[0], "model": group[1],
                           "train_perturbation": group[2], "method": method,
                           "n": len(mrows), "seeds": sorted(r["seed"] for r in mrows)}
    for key in metric_keys:
        vals = [r.get(key) for r in mrows]
        if any(_num(v) is not None for v in vals):
            agg[key] = summarize([v for v in vals if _num(v) is not None]).to_dict()
    agg["num_params"] = mrows[0].get("num_params")
    agg["extra_params"] = mrows[0].get("extra_params")
    return agg


def _paired_rows(group: tuple, method: str, mrows: list[dict[str, Any]],
                 base: dict[int, dict[str, Any]],
                 metric_keys: Sequence[str]) -> list[dict[str, Any]]:
    seeds = sorted(set(base) & {r["seed"] for r in mrows})
    mine = {r["seed"]: r for r in mrows}
    tests = []
    for key in metric_keys:
        a = [mine[s].get(key) for s in seeds]
        b = [base[s].get(key) for s in seeds]
        if sum(_num(x) is not None and _num(y) is not None for x, y in zip(a, b)) < 1:
            continue
        t = paired_test([_num(x) for x in a], [_num(y) for y in b])
        wins = sum(1 for x, y in zip(a, b) if _num(x) is not None and _num(y) is not None
                   and x > y)
        tests.append({"dataset": group[0], "model": group[1],
                      "train_perturbation": group[2], "method": method,
                      "metric": key, "baseline": BASELINE, "seeds": seeds,
                      "wins": wins, **t.to_dict()})
    return tests


def _condition_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's last column: mean over the training-input conditions, per seed, then
    paired against standard."""
    per_dm: dict[tuple, dict[str, dict[int, dict[str, float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict)))
    for row in rows:
        acc = _num(row["test_accuracy"])
        if acc is not None:
            per_dm[(row["dataset"], row["model"])][row["method"]][row["seed"]][
                row["train_perturbation"]] = acc
    condition_means: list[dict[str, Any]] = []
    for (ds, model), methods in sorted(per_dm.items()):
        conds = sorted({p for mm in methods.values() for s in mm.values() for p in s},
                       key=_pert_order)
        if len(conds) < 2:
            continue
        seed_means = {method: {seed: sum(v[c] for c in conds) / len(conds)
                               for seed, v in seeds.items() if all(c in v for c in conds)}
                      for method, seeds in methods.items()}
        base = seed_means.get(BASELINE, {})
        for method in sorted(seed_means, key=_method_order):
            sm = seed_means[method]
            entry = {"dataset": ds, "model": model, "conditions": conds, "method": method,
                     "test_accuracy": summarize(list(sm.values())).to_dict()}
            if method != BASELINE and base:
                seeds = sorted(set(sm) & set(base))
                t = paired_test([sm[s] for s in seeds], [base[s] for s in seeds])
                entry["vs_standard"] = {"seeds": seeds,
                                        "wins": sum(sm[s] > base[s] for s in seeds),
                                        **t.to_dict()}
            condition_means.append(entry)
    return condition_means


def _variance_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Per (dataset, model, condition, method, layer): the learned variance over seeds."""
    variances: list[dict[str, Any]] = []
    var_acc: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for layer, v in _variances(r.metrics).items():
            var_acc[(*r.group, r.method)][layer].append(v)
    for (ds, model, pert, method), layers in sorted(var_acc.items(),
                                                    key=lambda kv: _pert_order(kv[0][2])):
        for layer, vals in layers.items():
            variances.append({"dataset": ds, "model": model, "train_perturbation": pert,
                              "method": method, "layer": layer,
                              "variance": summarize(vals).to_dict()})
    return variances


def _variance_verdicts(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """`report_variance.verdict` of every run that learned variances."""
    verdicts: list[dict[str, Any]] = []
    for r in records:
        v = report_variance.read_variance_run(r.method, r.seed, r.metrics, r.config)
        if v is not None:
            verdicts.append({"dataset": r.group[0], "model": r.group[1],
                             "train_perturbation": r.perturbation, "method": r.method,
                             "seed": r.seed, "run": r.name, "layout": v.layout,
                             **report_variance.verdict(v)})
    return verdicts


def _results_notes(aggregates: list[dict[str, Any]], tests: list[dict[str, Any]]) -> list[str]:
    notes = []
    # The caveat quotes the floors of the smallest comparison actually tested.
    ns = sorted({t["n"] for t in tests if t["n"] >= 2} or {a["n"] for a in aggregates})
    if ns and ns[0] <= 5:
        notes.append(low_power_note(ns[0]))
    if not any(a["method"] == BASELINE for a in aggregates):
        notes.append("standard training is not in this sweep, so no paired tests were run.")
    return notes


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _json_clean(obj: Any) -> Any:
    """NaN/inf -> None so results.json is strict JSON (readable by any parser); floats are
    rounded to 7 significant digits (float32 metrics carry no more) to keep the file small."""
    if isinstance(obj, float):
        return float(f"{obj:.7g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    return obj


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write results.json and results.csv (atomically); returns their paths."""
    jpath, cpath = out_dir / "results.json", out_dir / "results.csv"
    clean = _json_clean(results)
    text = json.dumps(clean, indent=1, default=_json_default, allow_nan=False)
    if len(text) > 900_000:  # big sweeps with evaluations: drop the indentation, not data
        text = json.dumps(clean, separators=(",", ":"), default=_json_default,
                          allow_nan=False)
    atomic_write_text(jpath, text)
    flat: list[dict[str, Any]] = []
    for row in results["runs"]:
        flat.append({"row_type": "run", **row})
    for agg in results["aggregates"]:
        r: dict[str, Any] = {"row_type": "aggregate"}
        for k, v in agg.items():
            if isinstance(v, dict):
                for sk in ("mean", "std", "sem", "ci_low", "ci_high"):
                    r[f"{k}" if sk == "mean" else f"{k}_{sk}"] = v.get(sk)
            elif isinstance(v, list):
                r[k] = " ".join(map(str, v))
            else:
                r[k] = v
        flat.append(r)
    cols: list[str] = []
    for r in flat:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in flat:
        writer.writerow({k: ("" if (isinstance(v, float) and not math.isfinite(v)) or v is None
                             else v) for k, v in r.items()})
    atomic_write_text(cpath, buf.getvalue())
    return jpath, cpath


# --- tables ----------------------------------------------------------------------------------
def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def _agg_index(results: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    return {(a["dataset"], a["model"], a["train_perturbation"], a["method"]): a
            for a in results["aggregates"]}


def _test_index(results: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    return {(t["dataset"], t["model"], t["train_perturbation"], t["method"], t["metric"]): t
            for t in results["paired_tests"]}


def summary_table(results: dict[str, Any], dataset: str, model: str) -> str:
    """Markdown table like the paper's Table 1: test accuracy (%) per method and condition.

    Cells are mean ± std over seeds; a column per training-input condition present, plus
    "mean" over conditions when there are several; Δ is the mean paired difference against
    standard (percentage points) of the last column, with its paired t-test p-value.
    """
    idx = _agg_index(results)
    conds = sorted({a["train_perturbation"] for a in results["aggregates"]
                    if a["dataset"] == dataset and a["model"] == model}, key=_pert_order)
    methods = sorted({a["method"] for a in results["aggregates"]
                      if a["dataset"] == dataset and a["model"] == model}, key=_method_order)
    cmeans = {c["method"]: c for c in results["condition_means"]
              if c["dataset"] == dataset and c["model"] == model}
    tests = _test_index(results)
    header = ["method", "n"] + [_PERT_LABEL.get(c, c) for c in conds]
    if len(conds) > 1:
        header.append("mean")
    header += ["Δ vs standard (pp)", "paired t p", "Wilcoxon p", "wins"]
    rows = []
    for m in methods:
        cells = [m]
        ns = [idx[(dataset, model, c, m)]["n"] for c in conds if (dataset, model, c, m) in idx]
        cells.append(str(min(ns)) if ns else "0")
        for c in conds:
            a = idx.get((dataset, model, c, m), {})
            cells.append(format_mean_std(a.get("test_accuracy", {}), 100.0))
        if len(conds) > 1:
            cm = cmeans.get(m, {})
            cells.append(format_mean_std(cm.get("test_accuracy", {}), 100.0))
            t = cm.get("vs_standard")
        else:
            t = tests.get((dataset, model, conds[0], m, "test_accuracy"))
        if m == BASELINE or not t:
            cells += ["-", "-", "-", "-"]
        else:
            d = t.get("mean_diff")
            cells += [f"{d * 100:+.2f}" if _num(d) is not None else "-",
                      format_paired_p(t), format_paired_p(t, "wilcoxon_p"),
                      f"{t.get('wins', 0)}/{t.get('n', 0)}"]
        rows.append(cells)
    return _md_table(header, rows)


def _paired_table(results: dict[str, Any], dataset: str, model: str, metric: str,
                  scale: float, unit: str) -> str:
    tests = [t for t in results["paired_tests"] if t["dataset"] == dataset
             and t["model"] == model and t["metric"] == metric]
    tests.sort(key=lambda t: (_pert_order(t["train_perturbation"]), _method_order(t["method"])))
    rows = []
    for t in tests:
        d, sd = t.get("mean_diff"), t.get("std_diff")
        lo, hi = _num(t.get("ci_low")), _num(t.get("ci_high"))
        rows.append([_PERT_LABEL.get(t["train_perturbation"], t["train_perturbation"]),
                     t["method"], t["n"],
                     f"{d * scale:+.3f}" if _num(d) is not None else "-",
                     f"{sd * scale:.3f}" if _num(sd) is not None else "-",
                     f"[{lo * scale:+.3f}, {hi * scale:+.3f}]" if lo is not None
                     and hi is not None else "-",
                     format_paired_p(t), format_paired_p(t, "wilcoxon_p"),
                     f"{t['wins']}/{t['n']}"])
    return _md_table(["condition", "method", "pairs", f"mean Δ ({unit})", f"std Δ ({unit})",
                      f"95% CI of Δ ({unit})", "paired t p", "Wilcoxon p",
                      "method > standard"], rows)


def _cost_key(results: dict[str, Any], dataset: str, model: str) -> str:
    """CPU seconds per epoch where the runs recorded them (steadier on a shared machine),
    else wall seconds of the training part of the epoch."""
    has_cpu = any("train_cpu_per_epoch_s" in a for a in results["aggregates"]
                  if a["dataset"] == dataset and a["model"] == model)
    return "train_cpu_per_epoch_s" if has_cpu else "train_time_per_epoch_s"


def _cost_table(results: dict[str, Any], dataset: str, model: str) -> str:
    idx = _agg_index(results)
    tests = _test_index(results)
    key = _cost_key(results, dataset, model)
    with_cpu = key == "train_cpu_per_epoch_s"
    rows = []
    for a in results["aggregates"]:
        if a["dataset"] != dataset or a["model"] != model:
            continue
        pert, m = a["train_perturbation"], a["method"]
        base = idx.get((dataset, model, pert, BASELINE), {})

        def rel(k: str) -> str:
            mine, ref = a.get(k, {}).get("mean"), base.get(k, {}).get("mean")
            if _num(mine) is None or not _num(ref):
                return "-"
            return f"{mine / ref:.2f}x"

        t = tests.get((dataset, model, pert, m, key), {})
        row = [_PERT_LABEL.get(pert, pert), m]
        if with_cpu:
            row += [format_mean_std(a.get("train_cpu_per_epoch_s", {}), 1.0, 2),
                    rel("train_cpu_per_epoch_s")]
        row += [format_mean_std(a.get("train_time_per_epoch_s", {}), 1.0, 2),
                rel("train_time_per_epoch_s"),
                format_paired_p(t, star=False) if m != BASELINE and t else "-",
                format_mean_std(a.get("time_per_epoch_s", {}), 1.0, 2),
                format_mean_std(a.get("peak_memory_mb", {}), 1.0, 0), rel("peak_memory_mb"),
                a.get("num_params") if a.get("num_params") is not None else "-",
                a.get("extra_params") if a.get("extra_params") is not None else "-"]
        rows.append(row)
    header = ["condition", "method"]
    if with_cpu:
        header += ["train CPU s/epoch", "x standard"]
    header += ["train wall s/epoch", "x standard", "paired t p", "epoch incl. validation (s)",
               "peak memory (MB)", "x standard", "params", "extra params"]
    return _md_table(header, rows)


def _variance_table(results: dict[str, Any], dataset: str, model: str) -> str:
    rows = []
    for v in results["variances"]:
        if v["dataset"] != dataset or v["model"] != model:
            continue
        s = v["variance"]
        rows.append([_PERT_LABEL.get(v["train_perturbation"], v["train_perturbation"]),
                     v["method"], f"`{v['layer']}`",
                     f"{s['mean']:.4g}" if _num(s.get("mean")) is not None else "-",
                     f"{s['std']:.2g}" if _num(s.get("std")) is not None else "-", s["n"]])
    return _md_table(["condition", "method", "layer (projection host)",
                      "mean learned variance", "std over seeds", "n"], rows)


_EVAL_ORDER = ("clean/", "calibration/", "attacks/", "corruptions/", "ood/", "smoothness/")


def _eval_key_order(key: str) -> tuple[int, str, str]:
    """Sort headline rows by section (clean first), then deterministic before sampled."""
    sec = next((i for i, p in enumerate(_EVAL_ORDER) if key.startswith(p)), len(_EVAL_ORDER))
    return (sec, "/sampled/" in key or key.endswith("/sampled"), key)


def _eval_table(results: dict[str, Any], dataset: str, model: str, pert: str) -> str:
    """Headline evaluation scalars: readable names, accuracies / ECE / AUROC in %, a column per
    method (mean ± std over seeds, with the paired t-test p against standard)."""
    idx = _agg_index(results)
    tests = _test_index(results)
    methods = sorted({a["method"] for a in results["aggregates"] if a["dataset"] == dataset
                      and a["model"] == model and a["train_perturbation"] == pert},
                     key=_method_order)
    keys = sorted({k for a in results["aggregates"] if a["dataset"] == dataset
                   and a["model"] == model and a["train_perturbation"] == pert
                   for k in a if k.startswith("eval/") and _HEADLINE.match(k[5:])},
                  key=lambda k: _eval_key_order(k[5:]))
    rows = []
    for k in keys:
        label, scale = readable_metric(k[5:])
        cells = [label]
        for m in methods:
            a = idx.get((dataset, model, pert, m), {})
            s = a.get(k)
            if not s:
                cells.append("-")
                continue
            cell = format_mean_std(s, scale, 2 if scale != 1.0 else 3)
            t = tests.get((dataset, model, pert, m, k))
            if t and m != BASELINE:
                cell += " (constant Δ)" if t.get("degenerate") else f" (p={format_paired_p(t)})"
            cells.append(cell)
        rows.append(cells)
    return _md_table(["metric"] + methods, rows)


# --- markdown -> self-contained HTML ---------------------------------------------------------
# Wide tables scroll inside their own box and long words wrap, so the page itself is never
# wider than the window (tests/experiments/report/test_report_html.py checks this in headless Chromium).
_HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:1em 0;font-size:0.88em;display:block;max-width:100%;
overflow-x:auto}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;
overflow-wrap:normal}th{background:#f2f2f2}img{max-width:100%;height:auto}
code{background:#f5f5f5;padding:0 3px}pre{background:#f5f5f5;padding:.6em;overflow-x:auto}
h1,h2,h3{border-bottom:1px solid #eee}summary{cursor:pointer;color:#335}"""


def _compact_png(path: Path) -> bytes:
    """The PNG re-encoded with a 256-colour palette: plots have few colours, and this makes
    the embedded page about 3x smaller (a page with a dozen figures stays well under 1 MB)."""
    raw = path.read_bytes()
    try:
        from PIL import Image
        with Image.open(io.BytesIO(raw)) as im:
            pal = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            buf = io.BytesIO()
            pal.save(buf, format="PNG", optimize=True)
        return buf.getvalue() if buf.tell() < len(raw) else raw
    except Exception:  # Pillow missing or an odd file: embed it as it is
        return raw


def details(summary: str, body: str) -> list[str]:
    """Markdown lines of a collapsed block (``<details>``; GitHub renders it, and
    `markdown_to_html` turns exactly this form into a real one while raw HTML stays off)."""
    return ["", f"<details><summary>{summary}</summary>", "", body, "", "</details>"]


def _open_details(body: str) -> str:
    # markdown-it (raw HTML off) escaped the lines `details` wrote: make them elements again.
    body = re.sub(r"<p>&lt;details&gt;&lt;summary&gt;(.*?)&lt;/summary&gt;</p>",
                  r"<details><summary>\1</summary>", body)
    return body.replace("<p>&lt;/details&gt;</p>", "</details>")


def markdown_to_html(markdown: str, base_dir: Path, title: str) -> str:
    """Render Markdown to one self-contained HTML page, images embedded as base64.

    markdown-it-py does the parsing (CommonMark plus tables); relative ``<img src>`` paths are
    resolved against ``base_dir`` and inlined as data URIs so the page has no external files.
    """
    from markdown_it import MarkdownIt
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(match: re.Match[str]) -> str:
        src = html.unescape(match.group(1))
        p = (base_dir / src) if not src.startswith(("data:", "http:", "https:")) else None
        if p is None or not p.is_file():
            return match.group(0)
        mime = "image/svg+xml" if p.suffix == ".svg" else f"image/{p.suffix.lstrip('.') or 'png'}"
        data = base64.b64encode(_compact_png(p) if p.suffix == ".png"
                                else p.read_bytes()).decode("ascii")
        return f'src="data:{mime};base64,{data}"'

    body = _open_details(re.sub(r'src="([^"]+)"', inline, body))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_HTML_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


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
