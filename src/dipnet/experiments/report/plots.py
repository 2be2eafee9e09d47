"""The sweep report's training-side figures: clean accuracy per method, the forest plot of
paired differences from standard, learning curves (DIPNet's loss split into NLL and barrier),
and compute cost. Each takes the ``results.json`` dict (or the run records) of
:mod:`dipnet.experiments.report` and writes one PNG with the fixed method colours.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from dipnet.experiments.report.style import (axis_floor, integer_epochs, legend_below,
                                             mark_truncated_axis, method_colour, panel_grid,
                                             save_figure)

__all__ = ["plot_accuracy", "plot_forest", "plot_curves", "plot_cost", "histories_by_method",
           "CONDITION_MARKERS"]

CONDITION_MARKERS = ("o", "s", "^", "D", "v", "P")
_PERT_LABEL = {"none": "none", "gaussian": "Gaussian", "fgsm": "FGSM"}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(float(x)) else None


def _cond_label(c: str) -> str:
    return _PERT_LABEL.get(c, c)


def plot_accuracy(aggregates: Sequence[dict[str, Any]], methods: Sequence[str],
                  conds: Sequence[str], title: str, path: Path) -> Path:
    """Clean test accuracy (%) per method: a point with its std over seeds per training-input
    condition (marker shape), coloured by method. Points, not bars, so the y axis may start
    above zero; when it does the axis carries the broken-axis mark."""
    idx = {(a["train_perturbation"], a["method"]): a for a in aggregates}
    fig, axes = panel_grid(1, panel_w=min(10.5, 2.5 + 0.75 * len(methods)), panel_h=3.3)
    ax = axes[0]
    width = 0.6 / max(len(conds), 1)
    lows = []
    for i, c in enumerate(conds):
        for j, m in enumerate(methods):
            s = idx.get((c, m), {}).get("test_accuracy") or {}
            mean, std = _num(s.get("mean")), _num(s.get("std")) or 0.0
            if mean is None:
                continue
            lows.append(100 * (mean - std))
            ax.errorbar(j + (i - (len(conds) - 1) / 2) * width, 100 * mean, yerr=100 * std,
                        color=method_colour(m), marker=CONDITION_MARKERS[i % 6], ms=6,
                        capsize=2, ls="none")
    for i, c in enumerate(conds):  # legend of the conditions, in neutral black
        ax.plot([], [], color="k", marker=CONDITION_MARKERS[i % 6], ls="none",
                label=f"train input: {_cond_label(c)}")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    for tick, m in zip(ax.get_xticklabels(), methods):
        tick.set_color(method_colour(m))
    ax.set_ylabel("clean test accuracy (%)")
    low = min(lows) if lows else 0.0
    high = ax.get_ylim()[1]
    ax.set_ylim(axis_floor(low, high, max(0.0, math.floor(low - 2))), min(100.0, high + 0.5))
    mark_truncated_axis(ax, "%")
    # The legend sits above the panel: inside, it would hide points.
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(conds),
              frameon=False)
    fig.suptitle(f"{title}: clean test accuracy, mean ± std over seeds", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_forest(panels: Sequence[tuple[str, Sequence[dict[str, Any]]]], title: str, path: Path,
                scale: float = 100.0, unit: str = "percentage points") -> Path | None:
    """Forest plot: each method's mean paired difference from standard with its 95% t interval
    over seeds, one panel per condition.

    Takes ``(panel title, tests)`` pairs, each test a dict with ``method``, ``n``, ``mean_diff``,
    ``ci_low``, ``ci_high``, ``degenerate`` and ``significant`` (as paired_test writes them).
    Intervals are drawn where defined; a constant difference is marked "const." and a single
    pair "n=1". Returns None when no panel has a test.
    """
    panels = [(t, [x for x in tests if _num(x.get("mean_diff")) is not None])
              for t, tests in panels]
    panels = [(t, tests) for t, tests in panels if tests]
    if not panels:
        return None
    rows = max(len(tests) for _, tests in panels)
    fig, axes = panel_grid(len(panels), panel_w=3.6, panel_h=0.9 + 0.32 * rows)
    for ax, (ptitle, tests) in zip(axes, panels):
        for y, t in enumerate(reversed(list(tests))):
            d = scale * float(t["mean_diff"])
            lo, hi = _num(t.get("ci_low")), _num(t.get("ci_high"))
            c = method_colour(str(t["method"]))
            if lo is not None and hi is not None:
                ax.plot([scale * lo, scale * hi], [y, y], color=c, lw=2)
            ax.plot(d, y, marker="D" if t.get("significant") else "o", color=c, ms=6,
                    mfc=c if t.get("significant") else "white")
            note = ("const." if t.get("degenerate") else
                    f"n={t.get('n')}" if (t.get("n") or 0) < 2 else "")
            if note:
                ax.annotate(note, (d, y), xytext=(4, 4), textcoords="offset points", fontsize=6)
        ax.axvline(0, color="k", lw=0.8)
        labels = [f"{t['method']} (n={t.get('n')})" for t in reversed(list(tests))]
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        for tick, t in zip(ax.get_yticklabels(), reversed(list(tests))):
            tick.set_color(method_colour(str(t["method"])))
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set_xlabel(f"difference from standard ({unit})", fontsize=8)
        ax.set_title(ptitle, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}: mean paired difference and 95% t interval over seeds "
                 "(filled diamond: t-test p < 0.05 with ≥ 3 pairs)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _curve(histories: Sequence[Sequence[dict[str, Any]]], key: str | Callable[[dict], Any]
           ) -> tuple[list[int], list[float], list[float]] | None:
    """Epochs, mean and std over runs of one history quantity (None when no run has it)."""
    import numpy as np
    get = key if callable(key) else (lambda h, k=key: h.get(k))
    rows = [[_num(get(h)) for h in hist] for hist in histories]
    rows = [r for r in rows if any(v is not None for v in r)]
    if not rows:
        return None
    length = min(len(r) for r in rows)
    arr = np.array([[np.nan if v is None else v for v in r[:length]] for r in rows], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs stay NaN
        mean, std = np.nanmean(arr, 0), np.nanstd(arr, 0)
    return list(range(1, length + 1)), list(mean), list(std)


def _data_term(h: dict[str, Any]) -> Any:
    """The data term of a history row: DIPNet's NLL part where recorded, else the loss (the
    cross-entropy the method minimises)."""
    return h.get("train_nll", h.get("train_loss"))


def plot_curves(histories: dict[str, list[list[dict[str, Any]]]], methods: Sequence[str],
                title: str, path: Path) -> Path | None:
    """Learning curves, mean ± std over seeds: the training data term (DIPNet's NLL part, the
    other methods' loss, so the lines compare), validation accuracy, and, when a method has
    them, its barrier (and stability) terms as they enter the loss.

    Takes ``{method: [history rows of each seed]}``. Returns None when no history exists.
    """
    if not any(histories.values()):
        return None
    extra = [(k, lab) for k, lab in (("train_barrier", "barrier"), ("train_stability",
                                                                    "stability"))
             if any(any(_num(h.get(k)) for h in hist) for hs in histories.values()
                    for hist in hs)]
    n = 2 + (1 if extra else 0)
    fig, axes = panel_grid(n, panel_w=3.6, panel_h=2.9)
    for m in methods:
        hs = histories.get(m) or []
        if not hs:
            continue
        c = method_colour(m)
        for ax, key in zip(axes[:2], (_data_term, "val_accuracy")):
            cur = _curve(hs, key)
            if cur is None:
                continue
            ep, mean, std = cur
            sc = 100.0 if key == "val_accuracy" else 1.0
            ax.plot(ep, [sc * v for v in mean], color=c, marker="o", ms=2.5, label=m)
            ax.fill_between(ep, [sc * (a - b) for a, b in zip(mean, std)],
                            [sc * (a + b) for a, b in zip(mean, std)], color=c, alpha=0.12,
                            lw=0)
        if extra:
            for (k, lab), ls in zip(extra, ("--", ":")):
                cur = _curve(hs, k)
                if cur is None or not any(v for v in cur[1]):
                    continue
                ep, mean, _ = cur
                axes[2].plot(ep, mean, color=c, ls=ls, marker="s", ms=2.5, label=f"{m}: {lab}")
    axes[0].set_ylabel("training NLL / cross-entropy")
    axes[0].set_title("data term (DIPNet: NLL part only)", fontsize=9)
    axes[1].set_ylabel("validation accuracy (%)")
    axes[1].set_title("validation accuracy", fontsize=9)
    if extra:
        axes[2].set_ylabel("term added to the loss")
        axes[2].set_title("DIPNet's other loss terms", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        integer_epochs(ax)
    fig.suptitle(f"{title}: mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    legend_below(fig, axes)
    return save_figure(fig, path)


def plot_cost(aggregates: Sequence[dict[str, Any]], methods: Sequence[str],
              conds: Sequence[str], time_key: str, time_label: str, title: str,
              path: Path, baseline: str = "standard") -> Path | None:
    """Training time per epoch and peak memory relative to standard, per method (colour) and
    condition (hatch); bars from zero, 1 = standard."""
    idx = {(a["train_perturbation"], a["method"]): a for a in aggregates}
    if not any((c, baseline) in idx for c in conds):
        return None
    fig, axes = panel_grid(2, panel_w=min(5.2, 1.8 + 0.4 * len(methods) * len(conds) ** 0.5),
                           panel_h=3.0, max_cols=2)
    width = 0.8 / max(len(conds), 1)
    hatches = ("", "//", "..", "xx", "\\\\", "++")
    for ax, key, label in zip(axes, (time_key, "peak_memory_mb"), (time_label, "peak memory")):
        for i, c in enumerate(conds):
            ref = _num((idx.get((c, baseline), {}).get(key) or {}).get("mean"))
            for j, m in enumerate(methods):
                s = idx.get((c, m), {}).get(key) or {}
                mean = _num(s.get("mean"))
                if mean is None or not ref:
                    continue
                ax.bar(j + (i - (len(conds) - 1) / 2) * width, mean / ref, width,
                       yerr=(_num(s.get("std")) or 0.0) / ref, capsize=2,
                       color=method_colour(m), hatch=hatches[i % 6], edgecolor="white")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel(f"{label} / standard", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    # Legend patches drawn as the bars are (grey, the condition's hatch): an empty bar() has
    # no patch to copy, and its legend entries all came out the same blue.
    axes[0].legend(handles=[Patch(facecolor="#777777", edgecolor="white", hatch=hatches[i % 6],
                                  label=f"train input: {_cond_label(c)}")
                            for i, c in enumerate(conds)], fontsize=6)
    fig.suptitle(f"{title}: compute cost relative to standard training", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def histories_by_method(records: Sequence[Any]) -> dict[str, list[list[dict[str, Any]]]]:
    """``{method: [history of each run]}`` from run records (objects with ``method`` and
    ``metrics``)."""
    out: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for r in records:
        hist = [h for h in r.metrics.get("history") or [] if isinstance(h, dict)]
        if hist:
            out[r.method].append(hist)
    return dict(out)
