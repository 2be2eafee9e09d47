"""results.json and results.csv of a sweep: one row per run, the aggregates per (condition,
method), every paired test against standard, the variance verdicts, and the provenance."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from dipnet._util.fileio import atomic_write_text
from dipnet.experiments.report.stats import low_power_note, paired_test, summarize
from dipnet.experiments.report import variance as report_variance
from dipnet.experiments.report.load import (RunRecord, _method_order, _num, _pert_order,
                                            flatten_evaluation)


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
