"""The learned variances in the sweep report: trajectories, final histograms, the data-term vs
barrier gradient, and a one-line verdict per run on whether the variances learned anything.

Reads what the dipnet-like methods record in metrics.json (any method whose history rows carry
these keys; runs without them are skipped):

- per history row ``variance``: ``{layer: {mean, min, max, q05, q25, q50, q75, q95, init,
  rel_change}}`` (rel_change = mean over features of |lambda / lambda_init - 1|), and
  ``variance_grad``: ``{layer: {data, barrier}}`` (mean gradient of the data term and of the
  barrier with respect to lambda over the epoch);
- ``variance_init`` ``{layer: float}`` and ``variance_final_hist`` ``{layer: {edges, counts}}``
  (per-feature histogram of the final log10 lambda);
- the older layout: ``variance_mean`` ``{layer: float}`` per history row only. Its initial
  value is taken from the run's ``init_variance`` setting when recorded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dipnet.experiments.report.style import (integer_epochs, layer_colours, legend_below,
                                             method_colour, panel_grid, save_figure)

__all__ = ["VarianceRun", "read_variance_run", "verdict", "verdict_line", "plot_trajectories",
           "plot_final_histograms", "plot_gradients", "MOVED_THRESHOLD", "SPREAD_THRESHOLD"]

#: A run whose variances moved less than this (mean relative change from init, averaged over
#: layers) and whose layers and features stay within SPREAD_THRESHOLD of each other is, in
#: effect, fixed Gaussian noise at its initial value.
MOVED_THRESHOLD = 0.10
SPREAD_THRESHOLD = 1.5


def _f(x: Any) -> float:
    """A finite float or NaN."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x) if math.isfinite(float(x)) else math.nan


@dataclass
class VarianceRun:
    """The variance record of one run, epoch 0 being the initial value.

    ``mean[layer][e]`` is lambda's mean over the layer's features after epoch e (e = 0: init,
    NaN when unknown); ``q05``/``q95`` the same for the 5% / 95% quantiles (None in the legacy
    layout); ``rel_change[layer]`` the final mean |lambda / init - 1| (per feature where
    recorded, else from the layer means); ``grad_data`` / ``grad_barrier`` per layer and epoch
    1..E; ``hist`` the final per-feature histogram of log10 lambda.
    """

    method: str
    seed: int
    layers: list[str]
    epochs: list[int]
    mean: dict[str, list[float]]
    q05: dict[str, list[float]] | None
    q95: dict[str, list[float]] | None
    init: dict[str, float]
    rel_change: dict[str, float]
    grad_data: dict[str, list[float]] = field(default_factory=dict)
    grad_barrier: dict[str, list[float]] = field(default_factory=dict)
    hist: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        """"full" (per-feature statistics) or "legacy" (layer means only)."""
        return "legacy" if self.q05 is None else "full"


def _init_setting(metrics: dict[str, Any], config: dict[str, Any]) -> float:
    for src in (metrics.get("method_params"), config.get("method_params"),
                (metrics.get("config") or {}).get("method_params"), config.get("dip")):
        if isinstance(src, dict) and _f(src.get("init_variance")) > 0:
            return _f(src.get("init_variance"))
    return math.nan


def read_variance_run(method: str, seed: int, metrics: dict[str, Any],
                      config: dict[str, Any] | None = None) -> VarianceRun | None:
    """The variance record of a finished run, or None when its history has no variances.

    Takes the run's method, seed, metrics.json dict and config.yaml dict (only used for the
    legacy layout's initial value). Tolerates rows without variances (NaN there).
    """
    hist = [h for h in metrics.get("history") or [] if isinstance(h, dict)]
    full = any(isinstance(h.get("variance"), dict) and h["variance"] for h in hist)
    legacy = any(isinstance(h.get("variance_mean"), dict) and h["variance_mean"] for h in hist)
    if not (full or legacy):
        return None
    layers: list[str] = []
    for h in hist:
        for la in (h.get("variance") if full else h.get("variance_mean")) or {}:
            if str(la) not in layers:
                layers.append(str(la))
    init: dict[str, float] = {}
    recorded = metrics.get("variance_init")
    for la in layers:
        v = _f(recorded.get(la)) if isinstance(recorded, dict) else math.nan
        if not v > 0 and full:
            v = next((_f(h["variance"][la].get("init")) for h in hist
                      if isinstance(h.get("variance"), dict)
                      and isinstance(h["variance"].get(la), dict)
                      and _f(h["variance"][la].get("init")) > 0), math.nan)
        if not v > 0:
            v = _init_setting(metrics, config or {})
        init[la] = v
    epochs = [0] + [int(h.get("epoch", i + 1)) for i, h in enumerate(hist)]

    def stat(h: dict[str, Any], la: str, key: str) -> float:
        if full:
            s = (h.get("variance") or {}).get(la)
            return _f(s.get(key)) if isinstance(s, dict) else math.nan
        return _f((h.get("variance_mean") or {}).get(la)) if key == "mean" else math.nan

    mean = {la: [init[la]] + [stat(h, la, "mean") for h in hist] for la in layers}
    q05 = {la: [init[la]] + [stat(h, la, "q05") for h in hist] for la in layers} if full else None
    q95 = {la: [init[la]] + [stat(h, la, "q95") for h in hist] for la in layers} if full else None
    rel: dict[str, float] = {}
    for la in layers:
        last = next((h for h in reversed(hist) if not math.isnan(stat(h, la, "mean"))), None)
        r = stat(last, la, "rel_change") if (last is not None and full) else math.nan
        if math.isnan(r) and last is not None and init[la] > 0:
            r = abs(stat(last, la, "mean") / init[la] - 1.0)
        rel[la] = r
    gd: dict[str, list[float]] = {}
    gb: dict[str, list[float]] = {}
    if any(isinstance(h.get("variance_grad"), dict) for h in hist):
        for la in layers:
            gd[la] = [_f(((h.get("variance_grad") or {}).get(la) or {}).get("data")) for h in hist]
            gb[la] = [_f(((h.get("variance_grad") or {}).get(la) or {}).get("barrier"))
                      for h in hist]
    fh = metrics.get("variance_final_hist")
    hists = {str(la): h for la, h in fh.items() if isinstance(h, dict)
             and isinstance(h.get("edges"), list) and isinstance(h.get("counts"), list)
             and len(h["edges"]) == len(h["counts"]) + 1} if isinstance(fh, dict) else {}
    return VarianceRun(method, seed, layers, epochs, mean, q05, q95, init, rel, gd, gb, hists)


def verdict(run: VarianceRun) -> dict[str, Any]:
    """Numbers behind the one-line verdict of a run.

    Returns ``moved`` (mean over layers of the final relative change from init), ``moved_max``
    and ``moved_max_layer``, ``layer_factor`` (largest / smallest final layer mean, with
    ``largest_layer`` / ``smallest_layer``), ``start_layer_factor`` (the same at the start: a
    relative start already differs between layers), ``feature_factor`` (largest q95 / q05 of the
    final per-feature lambda over layers; NaN in the legacy layout), ``growth_min`` /
    ``growth_max`` (smallest and largest final / initial layer mean) and ``learned``: None when
    nothing is known; else, where the start is known, True only if the variances moved from it
    (``moved`` >= MOVED_THRESHOLD, or features or the layer profile spread by SPREAD_THRESHOLD
    beyond the start's), so frozen variances that differ between layers only because their
    start did are never called learned; without a known start, True when layers or features
    differ by SPREAD_THRESHOLD.
    """
    rel = {la: r for la, r in run.rel_change.items() if not math.isnan(r)}
    finals = {la: next((v for v in reversed(vals) if not math.isnan(v)), math.nan)
              for la, vals in run.mean.items()}
    finals = {la: v for la, v in finals.items() if v > 0}
    moved = sum(rel.values()) / len(rel) if rel else math.nan
    top = max(rel, key=rel.get) if rel else None
    layer_factor = max(finals.values()) / min(finals.values()) if finals else math.nan
    starts = {la: v for la, v in run.init.items() if v > 0 and la in finals}
    start_factor = max(starts.values()) / min(starts.values()) if starts else math.nan
    growth = [finals[la] / starts[la] for la in starts]
    feature_factor = math.nan
    if run.q05 is not None and run.q95 is not None:
        ratios = []
        for la in run.layers:
            lo = next((v for v in reversed(run.q05[la][1:]) if not math.isnan(v)), math.nan)
            hi = next((v for v in reversed(run.q95[la][1:]) if not math.isnan(v)), math.nan)
            if lo > 0 and hi > 0:
                ratios.append(hi / lo)
        feature_factor = max(ratios) if ratios else math.nan
    features_spread = not math.isnan(feature_factor) and feature_factor >= SPREAD_THRESHOLD
    if math.isnan(moved) and math.isnan(layer_factor):
        learned = None
    elif not math.isnan(moved):
        reshaped = (not math.isnan(start_factor) and not math.isnan(layer_factor) and max(
            layer_factor / start_factor, start_factor / layer_factor) >= SPREAD_THRESHOLD)
        learned = moved >= MOVED_THRESHOLD or features_spread or reshaped
    else:
        learned = features_spread or layer_factor >= SPREAD_THRESHOLD
    return {"moved": moved, "moved_max": rel.get(top, math.nan) if top else math.nan,
            "moved_max_layer": top, "layer_factor": layer_factor,
            "largest_layer": max(finals, key=finals.get) if finals else None,
            "smallest_layer": min(finals, key=finals.get) if finals else None,
            "start_layer_factor": start_factor, "feature_factor": feature_factor,
            "growth_min": min(growth) if growth else math.nan,
            "growth_max": max(growth) if growth else math.nan, "learned": learned}


def verdict_line(run: VarianceRun, label: str) -> str:
    """One Markdown line for a run: for learned variances, the profile they reached across
    layers and features and how it differs from the start; for variances that stayed at their
    start (frozen, or too slow to move), that they did and what the start was."""
    v = verdict(run)
    finals = {la: next((x for x in reversed(vals) if not math.isnan(x)), math.nan)
              for la, vals in run.mean.items()}
    if v["learned"] is None:
        return f"- {label}: no variance recorded → **no reading**."
    if v["learned"] is False:
        parts = []
        if not math.isnan(v["moved"]):
            parts.append(f"the variances stayed at their start (moved {100 * v['moved']:.1f}% "
                         "on average)")
        if not math.isnan(v["layer_factor"]) and v["layer_factor"] >= SPREAD_THRESHOLD:
            parts.append(f"the layers differ by a factor {v['layer_factor']:.2f} because the "
                         "start did (relative to each layer's activations)")
        parts = parts or ["layers and features within a factor "
                          f"{SPREAD_THRESHOLD:g} of each other, start unknown"]
        return (f"- {label}: " + "; ".join(parts)
                + " → **barely moved: in effect fixed noise at the initial value**.")
    parts = []
    if v["largest_layer"] is not None and v["largest_layer"] != v["smallest_layer"]:
        lo, hi = v["smallest_layer"], v["largest_layer"]
        text = (f"across layers from {finals[lo]:.3g} (`{lo}`) to {finals[hi]:.3g} (`{hi}`), "
                f"a factor {v['layer_factor']:.2f}")
        if not math.isnan(v["start_layer_factor"]):
            text += f" (at the start {v['start_layer_factor']:.2f})"
        parts.append(text)
    if not math.isnan(v["feature_factor"]):
        parts.append(f"features within a layer spread by up to {v['feature_factor']:.2f}x "
                     "(q95/q05)")
    if not math.isnan(v["growth_min"]):
        same = abs(v["growth_max"] / v["growth_min"] - 1) < 0.005
        parts.append(f"each layer's mean ended at {v['growth_min']:.3g}x its start" if same
                     else f"layer means ended at {v['growth_min']:.3g}x to "
                          f"{v['growth_max']:.3g}x their start")
    else:
        parts.append("initial variance not recorded, so the change from it is unknown")
    return f"- {label}: " + "; ".join(parts) + " → **the variances learned a profile**."


def _nanmean_rows(rows: Sequence[Sequence[float]]) -> list[float]:
    """Column means over equally truncated rows, ignoring NaN (an all-NaN column stays NaN)."""
    import warnings

    import numpy as np
    length = min(len(r) for r in rows)
    arr = np.array([list(r[:length]) for r in rows], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice"
        return [float(v) for v in np.nanmean(arr, axis=0)]


def _by_method(runs: Sequence[VarianceRun], order: Sequence[str]) -> dict[str, list[VarianceRun]]:
    out: dict[str, list[VarianceRun]] = defaultdict(list)
    for r in runs:
        out[r.method].append(r)
    return {m: out[m] for m in sorted(out, key=lambda m: (order.index(m) if m in order
                                                          else len(order), m))}


def _short(layer: str) -> str:
    return layer if len(layer) <= 22 else "…" + layer[-20:]


def plot_trajectories(runs: Sequence[VarianceRun], title: str, path: Path,
                      order: Sequence[str] = ()) -> Path | None:
    """lambda per layer over epochs, from the initial value at epoch 0: one panel per method,
    mean over seeds of the layer mean (line) and of the per-feature 5-95% quantiles (band),
    log y axis. Returns the PNG path, or None without runs."""
    if not runs:
        return None
    groups = _by_method(runs, order)
    fig, axes = panel_grid(len(groups), panel_w=3.6, panel_h=3.0)
    for ax, (method, rs) in zip(axes, groups.items()):
        layers = list(dict.fromkeys(la for r in rs for la in r.layers))
        colours = layer_colours(layers)
        for la in layers:
            have = [r for r in rs if la in r.mean]
            ep = min((r.epochs for r in have), key=len)
            mean = _nanmean_rows([r.mean[la] for r in have])
            ax.plot(ep[:len(mean)], mean, color=colours[la], marker="o", ms=2.5, lw=1.4,
                    label=_short(la))
            full = [r for r in have if r.q05 is not None and r.q95 is not None]
            if full:
                lo = _nanmean_rows([r.q05[la] for r in full])  # type: ignore[index]
                hi = _nanmean_rows([r.q95[la] for r in full])  # type: ignore[index]
                n = min(len(lo), len(hi))
                ax.fill_between(ep[:n], lo[:n], hi[:n], color=colours[la], alpha=0.15, lw=0)
        inits = sorted({v for r in rs for v in r.init.values() if v > 0})
        for v in inits[:3]:
            ax.axhline(v, color="grey", lw=0.7, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("epoch (0 = initial value)")
        ax.set_ylabel("λ (log scale)")
        ax.set_title(f"{method} ({len(rs)} seed{'s' if len(rs) != 1 else ''})", fontsize=9,
                     color=method_colour(method))
        ax.grid(alpha=0.3, which="both")
        integer_epochs(ax)
        ax.legend(fontsize=6, title="layer", title_fontsize=6, loc="best")
    fig.suptitle(title + ": line = mean over features and seeds, band = 5-95% of features, "
                 "dotted = init", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_final_histograms(runs: Sequence[VarianceRun], title: str, path: Path,
                          order: Sequence[str] = ()) -> Path | None:
    """The final per-feature histogram of log10 lambda, one panel per layer, one step line per
    method (seeds summed when they share bin edges), the initial value dotted. None when no
    run recorded a histogram."""
    runs = [r for r in runs if r.hist]
    if not runs:
        return None
    import numpy as np
    layers = list(dict.fromkeys(la for r in runs for la in r.layers if la in r.hist))
    groups = _by_method(runs, order)
    fig, axes = panel_grid(len(layers), panel_w=3.4, panel_h=2.6, max_cols=3)
    for ax, la in zip(axes, layers):
        for method, rs in groups.items():
            hs = [r.hist[la] for r in rs if la in r.hist]
            if not hs:
                continue
            same = all(h["edges"] == hs[0]["edges"] for h in hs)
            series = ([(hs[0]["edges"], np.sum([h["counts"] for h in hs], axis=0))] if same
                      else [(h["edges"], h["counts"]) for h in hs])
            for i, (edges, counts) in enumerate(series):
                ax.stairs(np.asarray(counts, dtype=float), np.asarray(edges, dtype=float),
                          color=method_colour(method), lw=1.4,
                          label=f"{method} ({len(hs)} seed{'s' if len(hs) != 1 else ''})"
                          if i == 0 else None)
        inits = sorted({r.init[la] for r in runs if r.init.get(la, 0) > 0})
        for v in inits[:3]:
            ax.axvline(math.log10(v), color="grey", lw=0.8, ls=":")
        ax.set_title(f"layer {_short(la)}", fontsize=9)
        ax.set_xlabel("log10 λ at the end (dotted: init)")
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_ylabel("features")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: per-feature λ at the end of training (seeds pooled)", fontsize=9)
    fig.tight_layout()
    legend_below(fig, axes)
    return save_figure(fig, path)


def plot_gradients(runs: Sequence[VarianceRun], title: str, path: Path,
                   order: Sequence[str] = ()) -> Path | None:
    """Mean gradient w.r.t. lambda of the data term (solid) and of the barrier (dashed), per
    layer over epochs, mean over seeds, symmetric-log y axis (the signs matter: at a balance
    they cancel). None when no run recorded gradients."""
    runs = [r for r in runs if r.grad_data]
    if not runs:
        return None
    import numpy as np
    layers = list(dict.fromkeys(la for r in runs for la in r.layers if la in r.grad_data))
    groups = _by_method(runs, order)
    fig, axes = panel_grid(len(layers), panel_w=3.4, panel_h=2.7, max_cols=3)
    mags = [abs(v) for r in runs for d in (r.grad_data, r.grad_barrier) for vals in d.values()
            for v in vals if v == v and v != 0]
    lin = float(np.percentile(mags, 5)) if mags else 1e-8
    for ax, la in zip(axes, layers):
        for method, rs in groups.items():
            have = [r for r in rs if la in r.grad_data]
            if not have:
                continue
            data = _nanmean_rows([r.grad_data[la] for r in have])
            bar = _nanmean_rows([r.grad_barrier.get(la, []) or [math.nan] * len(data)
                                 for r in have])
            ep = list(range(1, len(data) + 1))
            c = method_colour(method)
            ax.plot(ep, data, color=c, ls="-", marker="o", ms=2.5, label=f"{method}: data term")
            ax.plot(ep[:len(bar)], bar, color=c, ls="--", marker="s", ms=2.5,
                    label=f"{method}: barrier")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=lin)
        ax.set_title(f"layer {_short(la)}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean ∂/∂λ (symlog)")
        ax.grid(alpha=0.3)
        integer_epochs(ax)
    fig.suptitle(f"{title}: gradient of each loss term w.r.t. λ, mean over the epoch and "
                 "seeds (at a balance they cancel)", fontsize=9)
    fig.tight_layout()
    legend_below(fig, axes, ncol=4)
    return save_figure(fig, path)

