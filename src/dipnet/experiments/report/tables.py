"""The report's markdown tables, read from results.json: clean accuracy per condition, the paired
tests, cost, variances and the evaluation metrics."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from dipnet.experiments.report.stats import format_mean_std, format_paired_p
from dipnet.experiments.report.eval_figures import readable_metric
from dipnet.experiments.report.load import _HEADLINE, _method_order, _num, _pert_order
from dipnet.experiments.report.results import BASELINE


_PERT_LABEL = {"none": "none", "gaussian": "Gaussian", "fgsm": "FGSM"}


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
