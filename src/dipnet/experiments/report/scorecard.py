"""The verdict of a comparison at one glance: one row per method, one column per question.

Columns: clean test accuracy, test accuracy after training on perturbed inputs, accuracy under
PGD (with EOT for a sampled prediction), on corrupted images, the calibration error (ECE) and
the training cost as a multiple of standard training. Each cell is the mean paired difference
from standard training (same seed) with its 95% interval; the mark says whether it is
significant after the Holm correction over every test the scorecard makes, and in which
direction (ECE: lower is better). Robustness columns read each method's own prediction (the
sampled one for a method that predicts by sampling), so the attack on it is the EOT attack.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from dipnet.experiments.report.stats import (ALPHA, MIN_PAIRS_FOR_SIGNIFICANCE, holm,
                                             is_significant, paired_test)

BASELINE = "standard"
CLEAN = "none"
BETTER, WORSE = "▲", "▼"

Row = dict[str, Any]


def _pgd_key(row: Row) -> str | None:
    """The PGD L-inf accuracy at the smallest eps > 0, in the run's own prediction."""
    pred = row.get("prediction") or "deterministic"
    best: tuple[float, str] | None = None
    for key in row:
        m = re.fullmatch(r"eval/attacks/pgd/linf/eps=([0-9.e-]+)/([^/]+)/.*accuracy", key)
        if m and m.group(2) == pred and float(m.group(1)) > 0:
            eps = float(m.group(1))
            if best is None or eps < best[0]:
                best = (eps, key)
    return best[1] if best else None


def _pred_key(template: str) -> Callable[[Row], str | None]:
    def key(row: Row) -> str | None:
        k = template.format(pred=row.get("prediction") or "deterministic")
        return k if k in row else None
    return key


@dataclass(frozen=True)
class Column:
    """One question: where its value is in a run's row, under which training condition, and
    which direction is better."""

    id: str
    label: str
    key: Callable[[Row], str | None]
    condition: str  # "none", or "perturbed": the sweep's first perturbed condition
    higher_better: bool = True
    scale: float = 100.0  # fractions shown as percentage points


COLUMNS: tuple[Column, ...] = (
    Column("clean", "clean acc", lambda r: "test_accuracy", CLEAN),
    Column("perturbed", "acc, perturbed training", lambda r: "test_accuracy", "perturbed"),
    Column("pgd", "PGD L∞ acc (EOT if sampled)", _pgd_key, CLEAN),
    Column("corruptions", "corruptions acc", _pred_key("eval/corruptions/mean/{pred}/accuracy"),
           CLEAN),
    Column("ece", "ECE", _pred_key("eval/calibration/{pred}/ece"), CLEAN, higher_better=False),
)


def _order(method: str) -> tuple[int, str]:
    return (0 if method == BASELINE else 1, method)


def method_settings(sweep: dict[str, Any] | None, method: str) -> str:
    """'tuned' (by ``dipnet tune``), 'defaults', or the settings the sweep gave the method."""
    sweep = sweep or {}
    tuning = sweep.get("tuning") or {}
    if isinstance(tuning, dict) and method in (tuning.get("methods") or [method]) and tuning:
        return "tuned"
    given = {**(sweep.get("method_params") or {}).get(method, {}),
             **(sweep.get("method_run") or {}).get(method, {})}
    if not given:
        return "defaults"
    return "set: " + ", ".join(f"{k}={v}" for k, v in sorted(given.items()))


def build(results: dict[str, Any], dataset: str, model: str, cost_key: str) -> dict[str, Any]:
    """The scorecard of one data set / model of a results.json dict (`report.build_results`).

    Takes the results, the data set and model, and the run-row key of the training cost per
    epoch. Returns ``{"dataset", "model", "columns": [{id, label, condition, higher_better}],
    "rows": [{"method", "settings", "cells": {id: cell}}], "tests", "note"}``; a cell is the
    PairedTest dict of method - standard plus ``p_holm``, ``significant`` (Holm-adjusted) and
    ``mark`` (▲ better, ▼ worse, '' neither), or for standard itself ``{"mean": ...}``; the
    ``cost`` cell holds ``ratio`` (mean cost / standard's mean cost).
    """
    runs = [r for r in results.get("runs", []) if r["dataset"] == dataset
            and r["model"] == model]
    conds = sorted({r["train_perturbation"] for r in runs})
    perturbed = next((c for c in ("gaussian", "fgsm", *conds) if c in conds and c != CLEAN),
                     None)
    by: dict[tuple[str, str], dict[int, Row]] = {}
    for r in runs:
        by.setdefault((r["method"], r["train_perturbation"]), {})[r["seed"]] = r
    methods = sorted({r["method"] for r in runs}, key=_order)
    columns = [c for c in COLUMNS if (perturbed if c.condition == "perturbed" else CLEAN)]
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    flat: list[tuple[str, str]] = []
    for col in columns:
        cond = perturbed if col.condition == "perturbed" else CLEAN
        base = by.get((BASELINE, cond), {})
        for method in methods:
            mine = by.get((method, cond), {})
            if method == BASELINE:
                vals = [r.get(col.key(r) or "") for r in mine.values()]
                vals = [v for v in vals if isinstance(v, (int, float))]
                if vals:
                    cells[(method, col.id)] = {"mean": sum(vals) / len(vals), "n": len(vals)}
                continue
            seeds = sorted(set(mine) & set(base))
            a = [mine[s].get(col.key(mine[s]) or "") for s in seeds]
            b = [base[s].get(col.key(base[s]) or "") for s in seeds]
            pairs = [(x, y) for x, y in zip(a, b) if isinstance(x, (int, float))
                     and isinstance(y, (int, float))]
            if not pairs:
                continue
            cells[(method, col.id)] = paired_test([p[0] for p in pairs],
                                                  [p[1] for p in pairs]).to_dict()
            flat.append((method, col.id))
    adjusted = holm([cells[k]["t_p"] for k in flat])
    better = {c.id: c.higher_better for c in columns}
    for k, p in zip(flat, adjusted):
        cell = cells[k]
        cell["p_holm"] = p
        cell["significant"] = (not cell.get("degenerate")) and is_significant(p, cell["n"])
        up = cell["mean_diff"] > 0
        cell["mark"] = ((BETTER if up == better[k[1]] else WORSE) if cell["significant"]
                        else "")
    base_cost = _mean_of(by.get((BASELINE, CLEAN), {}), cost_key)
    for method in methods:
        mine = _mean_of(by.get((method, CLEAN), {}), cost_key)
        if mine is not None and base_cost:
            cells[(method, "cost")] = {"ratio": mine / base_cost}
    n_pairs = [cells[k]["n"] for k in flat]
    note = ""
    if n_pairs and max(n_pairs) < MIN_PAIRS_FOR_SIGNIFICANCE:
        note = (f"With {max(n_pairs)} seed(s) per method no cell can be significant (at least "
                f"{MIN_PAIRS_FOR_SIGNIFICANCE} pairs are needed): read the intervals, and add "
                "seeds (--seeds) for a verdict.")
    out_cols = [{"id": c.id, "label": c.label, "condition": perturbed if c.condition ==
                 "perturbed" else CLEAN, "higher_better": c.higher_better, "scale": c.scale}
                for c in columns]
    out_cols.append({"id": "cost", "label": "cost x plain", "condition": CLEAN,
                     "higher_better": False, "scale": 1.0, "key": cost_key})
    return {
        "dataset": dataset, "model": model, "columns": out_cols, "tests": len(flat),
        "rows": [{"method": m, "settings": method_settings(results.get("sweep"), m),
                  "cells": {c["id"]: cells[(m, c["id"])] for c in out_cols
                            if (m, c["id"]) in cells}} for m in methods],
        "note": note,
    }


def _mean_of(rows: dict[int, Row], key: str) -> float | None:
    vals = [r.get(key) for r in rows.values()]
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _cell_text(cell: dict[str, Any] | None, scale: float, column: str) -> str:
    if not cell:
        return "not measured"
    if "ratio" in cell:
        return f"{cell['ratio']:.2f}x"
    if "mean" in cell:
        return f"{cell['mean'] * scale:.2f}"
    d, lo, hi = cell.get("mean_diff"), cell.get("ci_low"), cell.get("ci_high")
    text = f"{d * scale:+.2f}"
    if cell.get("degenerate"):
        return text + " (the same in every pair: no test)"
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo) \
            and math.isfinite(hi):
        text += f" [{lo * scale:+.2f}, {hi * scale:+.2f}]"
    return text + (f" {cell['mark']}" if cell.get("mark") else "")


def markdown(card: dict[str, Any]) -> str:
    """The scorecard as a markdown table (it prints well in a terminal too), with the lines
    that say how to read it."""
    cols = card["columns"]
    header = ["method", "settings"] + [c["label"] + (f" ({c['condition']})" if c["id"] ==
                                                     "perturbed" else "") for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in card["rows"]:
        # Bold: the report's other tables are looked up by "| method |" rows.
        name = f"**{row['method']}**" + (" (reference: its own values)"
                                         if row["method"] == BASELINE else "")
        cells = [_cell_text(row["cells"].get(c["id"]), c["scale"], c["id"]) for c in cols]
        lines.append("| " + " | ".join([name, row["settings"], *cells]) + " |")
    settings = {r["settings"] for r in card["rows"]}
    how = (f"Each cell: the method minus standard training on the same seeds, in percentage "
           f"points, with its 95% interval; {BETTER} / {WORSE}: better / worse than standard, "
           f"paired t-test p < {ALPHA} after the Holm correction over the {card['tests']} tests "
           "of this table (ECE: lower is better). Cost: training time per epoch as a multiple "
           "of standard's. 'not measured': the runs hold no such value (evaluate them with "
           "`dipnet evaluate RUN`, or `dipnet compare ... --evaluate quick`).")
    if settings == {"defaults"}:
        how += (" Every method ran at its defaults, nothing tuned: this is not the tuned "
                "comparison of the README (docs/results/variance_study/).")
    elif "tuned" in settings:
        how += " 'tuned': the settings chosen by `dipnet tune` with an equal budget per method."
    text = "\n".join(lines) + "\n\n" + how
    if card.get("note"):
        text += " " + card["note"]
    return text
