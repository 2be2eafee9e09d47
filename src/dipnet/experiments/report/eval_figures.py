"""Test-time evaluation in the sweep report: readable metric names and the cross-method figures.

Takes, per method, the evaluation.json dicts of its seeds (layout in docs/evaluation.md) and
draws with the report's fixed method colours and page-width panel grids: accuracy under attack,
reliability diagrams (when evaluation.json holds the bins), accuracy against test-time Gaussian
noise, OOD AUROC, calibration error, smoothness and the corruption heat map. The tables of the
section come from `dipnet.experiments.report.eval_tables`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from dipnet.experiments.report.stats import summarize
from dipnet.experiments.report.eval_tables import annotate_percent_cells
from dipnet.experiments.report.style import (axis_floor, legend_below, mark_truncated_axis,
                                             method_colour, method_marker, panel_grid,
                                             prediction_style, save_figure)

__all__ = ["readable_metric", "series_of", "plot_attacks", "plot_reliability",
           "plot_noise_accuracy", "plot_ood", "plot_calibration_error", "plot_smoothness",
           "plot_corruptions", "noise_source", "has_reliability", "plot_certified",
           "certified_check"]

Evaluations = dict[str, list[dict[str, Any]]]
Series = tuple[str, str]  # (method, prediction)

_SMOOTH_LABELS = {
    "loss_grad_norm": "input-gradient norm of the loss",
    "logit_jacobian_spectral": "logit Jacobian spectral norm",
    "lipschitz_adversarial": "local Lipschitz (adversarial)",
    "lipschitz_random": "local Lipschitz (random)",
    "input_hessian_spectral": "input-Hessian spectral norm",
    "weight_hessian_trace": "weight-Hessian trace",
    "weight_hessian_top_eigenvalue": "weight-Hessian top eigenvalue",
    "output_variance": "output variance over trajectories",
}
_NORM = {"linf": "L∞", "l2": "L2"}

# Gaussian-noise corruption (imagecorruptions): per-channel sigma by severity 1..5.
_CORRUPTION_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)


def readable_metric(key: str) -> tuple[str, float]:
    """A readable row name and the display scale for a flattened evaluation key.

    ``clean/sampled/accuracy`` -> ("clean accuracy (%), sampled", 100); unknown keys come back
    unchanged with scale 1. Accuracies, ECE and AUROC are shown in %.
    """
    rules: list[tuple[str, Callable[[re.Match[str]], str], float]] = [
        (r"^clean/([^/]+)/accuracy$", lambda m: f"clean accuracy (%), {m[1]}", 100.0),
        (r"^calibration/([^/]+)/ece$", lambda m: f"calibration error ECE (%), {m[1]}", 100.0),
        (r"^calibration/([^/]+)/brier$", lambda m: f"Brier score, {m[1]}", 1.0),
        (r"^calibration/([^/]+)/nll$", lambda m: f"test NLL, {m[1]}", 1.0),
        # identifying settings after the prediction (steps=20, ...) are not part of the name
        (r"^attacks/([^/]+)/([^/]+)/eps=([^/]+)/([^/=]+)(?:/[^/]+=[^/]+)*/accuracy$",
         lambda m: f"{m[1].upper()} {_NORM.get(m[2], m[2])} ε={m[3]} accuracy (%), {m[4]}",
         100.0),
        (r"^corruptions/mean/([^/]+)/accuracy$",
         lambda m: f"mean accuracy under corruptions (%), {m[1]}", 100.0),
        (r"^ood/([^/]+)/([^/]+)/([^/]+)/([^/]+)/auroc$",
         lambda m: f"OOD AUROC (%) {m[1]} vs {m[2]}, score {m[4]}, {m[3]}", 100.0),
        (r"^smoothness/([^/]+)/([^/]+)(?:/mean)?$",
         lambda m: f"{_SMOOTH_LABELS.get(m[2], m[2].replace('_', ' '))}, {m[1]}", 1.0),
    ]
    for pattern, label, scale in rules:
        m = re.match(pattern, key)
        if m:
            return label(m), scale
    return key, 1.0


def series_of(evaluations: Evaluations, order: Sequence[str] = ()) -> list[Series]:
    """(method, prediction) pairs present, methods in ``order`` then by name, deterministic
    before sampled."""
    methods = sorted((m for m, evs in evaluations.items() if evs),
                     key=lambda m: (order.index(m) if m in order else len(order), m))
    out: list[Series] = []
    for m in methods:
        preds: list[str] = []
        for e in evaluations[m]:
            for p in e.get("predictions") or list((e.get("clean") or {}).keys()):
                if p not in preds:
                    preds.append(p)
        out += [(m, p) for p in sorted(preds, key=lambda p: p != "deterministic")]
    return out


def _vals(evs: Sequence[dict[str, Any]], pred: str,
          fn: Callable[[dict[str, Any], str], Any]) -> list[float]:
    out = []
    for e in evs:
        try:
            v = fn(e, pred)
        except (KeyError, TypeError, IndexError, StopIteration):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _ms(vals: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std for an error bar (`stats.summarize`; a bar of 0 for one value, NaN
    mean for none)."""
    s = summarize(vals)
    return s.mean, s.std if s.n > 1 else 0.0


def _label(s: Series) -> str:
    return f"{s[0]} ({s[1]})"


def _tick(s: Series) -> str:
    """Short axis label: the method, marked only when its prediction is the sampled one."""
    return s[0] if s[1] == "deterministic" else f"{s[0]} (sampled)"


# --- attacks ---------------------------------------------------------------------------------
def _attack_rows(e: dict[str, Any], pred: str, attack: str, norm: str) -> dict[float, float]:
    return {float(a["eps"]): a["accuracy"] for a in e.get("attacks") or []
            if isinstance(a, dict) and a.get("prediction") == pred and a.get("attack") == attack
            and a.get("norm") == norm and a.get("eps") is not None}


def plot_attacks(evaluations: Evaluations, title: str, path: Path,
                 order: Sequence[str] = ()) -> Path | None:
    """Accuracy (%) against epsilon, one panel per (attack, norm), mean ± std over seeds."""
    series = series_of(evaluations, order)
    panels = sorted({(a.get("attack"), a.get("norm")) for evs in evaluations.values()
                     for e in evs for a in e.get("attacks") or [] if isinstance(a, dict)
                     and a.get("attack") and a.get("norm")}, key=lambda p: (str(p[0]), str(p[1])))
    if not panels or not series:
        return None
    # Top row: accuracy; bottom row (with a standard baseline): the difference from standard's
    # deterministic prediction, where lines that overlap on the 0-100 scale come apart.
    base = next((s for s in series if s == ("standard", "deterministic")), None)
    fig, axes = panel_grid(len(panels) * (2 if base else 1), panel_w=3.5, panel_h=2.8,
                           max_cols=len(panels))

    def curve(s: Series, attack: str, norm: str) -> dict[float, tuple[float, float]]:
        evs = evaluations[s[0]]
        eps = sorted({k for e in evs for k in _attack_rows(e, s[1], attack, norm)})
        return {x: _ms(_vals(evs, s[1], lambda e, p, x=x: _attack_rows(e, p, attack, norm)[x]))
                for x in eps}

    for col, (attack, norm) in enumerate(panels):
        ax = axes[col]
        ref = curve(base, attack, norm) if base else {}
        for s in series:
            pts = curve(s, attack, norm)
            if not pts:
                continue
            style = {"color": method_colour(s[0]), "marker": method_marker(s[0]),
                     "linestyle": prediction_style(s[1])["linestyle"], "ms": 4, "lw": 1.2,
                     "mfc": "white" if s[1] == "sampled" else method_colour(s[0])}
            xs = list(pts)
            ax.errorbar(xs, [100 * pts[x][0] for x in xs], yerr=[100 * pts[x][1] for x in xs],
                        capsize=2, label=_label(s), **style)
            if base:
                shared = [x for x in xs if x in ref]
                axes[len(panels) + col].plot(
                    shared, [100 * (pts[x][0] - ref[x][0]) for x in shared], **style)
        ax.set_title(f"{str(attack).upper()}, {_NORM.get(norm, norm)}", fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if base:
            diff = axes[len(panels) + col]
            diff.axhline(0.0, color="k", lw=0.8)
            diff.set_ylabel("Δ vs standard (points)")
            diff.set_xlabel("ε (pixel units in [0, 1])")
            diff.grid(alpha=0.3)
        else:
            ax.set_xlabel("ε (pixel units in [0, 1])")
    fig.suptitle(f"{title}: accuracy under attack, mean ± std over seeds (below: minus "
                 "standard's; filled = deterministic, open = sampled)", fontsize=9)
    fig.tight_layout()
    legend_below(fig, axes)
    return save_figure(fig, path)


# --- certified accuracy (certify.json, attached as evaluation["certified"]) ------------------
def _certified_rows(e: dict[str, Any]) -> dict[float, float]:
    c = e.get("certified")
    rows = c.get("certified_accuracy") if isinstance(c, dict) else None
    return {float(r["radius"]): r["accuracy"] for r in rows or []
            if isinstance(r, dict) and r.get("radius") is not None}


def _empirical_prediction(evs: Sequence[dict[str, Any]]) -> str:
    """The prediction the certified curve is set beside: the sampled one where the method has
    it (the nearest of the suite's predictions to the smoothed classifier), else deterministic."""
    preds = {p for e in evs for p in e.get("predictions") or list((e.get("clean") or {}))}
    return "sampled" if "sampled" in preds else "deterministic"


def plot_certified(evaluations: Evaluations, title: str, path: Path,
                   order: Sequence[str] = ()) -> Path | None:
    """Certified accuracy (%) against the L2 radius for every certified method (solid), beside
    its empirical accuracy under PGD L2 at the suite's epsilons (dotted), mean ± std over seeds;
    None when no run was certified (``dipnet certify``)."""
    methods = [m for m, _ in series_of(evaluations, order) if any(
        _certified_rows(e) for e in evaluations[m])]
    methods = list(dict.fromkeys(methods))
    if not methods:
        return None
    fig, axes = panel_grid(1, panel_w=5.0, panel_h=3.4)
    ax = axes[0]
    for m in methods:
        evs = [e for e in evaluations[m] if _certified_rows(e)]
        radii = sorted({r for e in evs for r in _certified_rows(e)})
        stats = [_ms(_vals(evs, "", lambda e, p, r=r: _certified_rows(e)[r])) for r in radii]
        ax.errorbar(radii, [100 * a for a, _ in stats], yerr=[100 * sd for _, sd in stats],
                    color=method_colour(m), capsize=2, ms=3, marker="o", linestyle="-",
                    label=f"{m}: certified")
        pred = _empirical_prediction(evs)
        eps = sorted({x for e in evs for x in _attack_rows(e, pred, "pgd", "l2")})
        if eps:
            emp = [_ms(_vals(evs, pred, lambda e, p, x=x: _attack_rows(e, p, "pgd", "l2")[x]))
                   for x in eps]
            ax.errorbar(eps, [100 * a for a, _ in emp], yerr=[100 * sd for _, sd in emp],
                        color=method_colour(m), capsize=2, ms=3, marker="s", linestyle=":",
                        label=f"{m}: PGD L2 ({pred})")
    ax.set_xlabel("L2 radius / ε (model-input units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: certified accuracy (randomized smoothing) beside PGD L2, mean ± "
                 "std over seeds", fontsize=9)
    fig.tight_layout()
    legend_below(fig, axes)
    return save_figure(fig, path)


def certified_check(evaluations: Evaluations) -> list[str]:
    """Check certified <= empirical accuracy at every radius that is also a PGD L2 epsilon, run
    by run; returns Markdown lines (empty when no run was certified).

    A run is flagged when its certified accuracy exceeds the empirical one by more than two
    binomial standard errors of the difference (the two are measured on different numbers of
    points): then the certificate or the attack is wrong, or the attacked prediction (the
    suite's sampled or deterministic one) is not the smoothed classifier the certificate is
    about.
    """
    checked, flagged = 0, []
    for m, evs in evaluations.items():
        pred = _empirical_prediction(evs)
        for e in evs:
            cert = _certified_rows(e)
            emp = _attack_rows(e, pred, "pgd", "l2")
            n_c = (e.get("certified") or {}).get("points") or 1
            n_a = (e.get("n_points") or {}).get("attacks") or 1
            for r in sorted(set(cert) & set(emp)):
                c, a = float(cert[r]), float(emp[r])
                se = math.sqrt(c * (1 - c) / n_c + a * (1 - a) / n_a)
                checked += 1
                if c > a + 2 * se:
                    flagged.append(f"- **{m} (seed {e.get('seed', '?')}), radius {r:g}: certified "
                                   f"{100 * c:.1f} % > empirical {100 * a:.1f} % (PGD L2, {pred})**"
                                   ": one of the two is wrong.")
    if not any(_certified_rows(e) for evs in evaluations.values() for e in evs):
        return []
    if not checked:
        return ["Certified radii and PGD L2 epsilons share no value: nothing to check "
                "(`dipnet certify --radii` takes the epsilons)."]
    if flagged:
        return [f"Certified accuracy above empirical accuracy ({len(flagged)} of {checked} "
                "checks; more than two standard errors):", *flagged]
    return [f"Check: certified accuracy is at most the empirical PGD L2 accuracy (within two "
            f"standard errors) at all {checked} shared radii."]


# --- reliability -----------------------------------------------------------------------------
def _reliability(e: dict[str, Any], pred: str) -> dict[str, list[float]] | None:
    r = ((e.get("calibration") or {}).get(pred) or {}).get("reliability")
    if not isinstance(r, dict):
        return None
    keys = ("confidence", "accuracy", "count")
    if not all(isinstance(r.get(k), list) for k in keys):
        return None
    if not len(r["confidence"]) == len(r["accuracy"]) == len(r["count"]):
        return None
    return r


def has_reliability(evaluations: Evaluations) -> bool:
    """True when any evaluation.json holds reliability bins (calibration.PRED.reliability)."""
    return any(_reliability(e, p) for evs in evaluations.values() for e in evs
               for p in (e.get("calibration") or {}))


def plot_reliability(evaluations: Evaluations, title: str, path: Path,
                     order: Sequence[str] = ()) -> Path | None:
    """Reliability diagrams, one panel per method: accuracy against mean confidence per
    confidence bin, pooled over seeds (bins weighted by their counts), deterministic and
    sampled predictions as separate lines, the diagonal as perfect calibration. None when no
    evaluation.json holds the bins."""
    series = [s for s in series_of(evaluations, order)
              if any(_reliability(e, s[1]) for e in evaluations[s[0]])]
    if not series:
        return None
    methods = list(dict.fromkeys(m for m, _ in series))

    def pooled(s: Series) -> list[tuple[float, float]]:
        """(mean confidence, accuracy) per bin over all seeds, bins weighted by counts."""
        bins: dict[int, list[float]] = {}
        for e in evaluations[s[0]]:
            r = _reliability(e, s[1])
            if r is None:
                continue
            for i, (c, a, n) in enumerate(zip(r["confidence"], r["accuracy"], r["count"])):
                if n and c is not None and a is not None:
                    b = bins.setdefault(i, [0.0, 0.0, 0.0])
                    b[0] += c * n
                    b[1] += a * n
                    b[2] += n
        return sorted((b[0] / b[2], b[1] / b[2]) for b in bins.values() if b[2] > 0)

    ref = ("standard", "deterministic")
    ref_pts = pooled(ref) if ref in series else []
    fig, axes = panel_grid(len(methods), panel_w=2.6, panel_h=2.6, max_cols=4)
    for ax, method in zip(axes, methods):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        if ref_pts and method != ref[0]:
            ax.plot([p[0] for p in ref_pts], [p[1] for p in ref_pts], color=method_colour(ref[0]),
                    lw=0.8, alpha=0.5, label="standard")
        for s in (s for s in series if s[0] == method):
            pts = pooled(s)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=method_colour(method),
                        ms=3, label=s[1], **prediction_style(s[1]))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_title(method, fontsize=9, color=method_colour(method))
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(f"{title}: reliability (pooled over seeds; dotted = perfectly calibrated, "
                 "faint = standard)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# --- accuracy against Gaussian noise ---------------------------------------------------------
def noise_source(evaluations: Evaluations) -> str | None:
    """Where accuracy under test-time Gaussian noise comes from: "sigma" (a ``gaussian_noise``
    list of {sigma, prediction, accuracy}), "corruption" (the gaussian_noise corruption by
    severity), or None."""
    evs = [e for es in evaluations.values() for e in es]
    if any(isinstance(e.get("gaussian_noise"), list) and e["gaussian_noise"] for e in evs):
        return "sigma"
    if any(isinstance(c, dict) and c.get("corruption") == "gaussian_noise"
           for e in evs for c in e.get("corruptions") or []):
        return "corruption"
    return None


def _noise_points(e: dict[str, Any], pred: str, source: str) -> dict[float, float]:
    out: dict[float, float] = {}
    clean = ((e.get("clean") or {}).get(pred) or {}).get("accuracy")
    if isinstance(clean, (int, float)):
        out[0.0] = float(clean)
    if source == "sigma":
        for r in e.get("gaussian_noise") or []:
            if isinstance(r, dict) and r.get("prediction") == pred and r.get("sigma") is not None:
                out[float(r["sigma"])] = r.get("accuracy")
    else:
        for c in e.get("corruptions") or []:
            if (isinstance(c, dict) and c.get("corruption") == "gaussian_noise"
                    and c.get("prediction") == pred and c.get("severity") is not None):
                out[float(c["severity"])] = c.get("accuracy")
    return {k: v for k, v in out.items() if isinstance(v, (int, float))}


def plot_noise_accuracy(evaluations: Evaluations, title: str, path: Path,
                        order: Sequence[str] = ()) -> Path | None:
    """Accuracy (%) against the strength of test-time Gaussian noise (0 = clean), mean ± std
    over seeds. Uses sigma when evaluation.json has a ``gaussian_noise`` sweep, else the
    gaussian_noise corruption's severities. None when neither is there."""
    source = noise_source(evaluations)
    if source is None:
        return None
    fig, axes = panel_grid(1, panel_w=6.0, panel_h=3.2)
    ax = axes[0]
    for s in series_of(evaluations, order):
        evs = evaluations[s[0]]
        xs = sorted({x for e in evs for x in _noise_points(e, s[1], source)})
        if len(xs) < 2:
            continue
        stats = [_ms(_vals(evs, s[1], lambda e, p, x=x: _noise_points(e, p, source)[x]))
                 for x in xs]
        ax.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * sd for _, sd in stats],
                    color=method_colour(s[0]), capsize=2, ms=3, label=_label(s),
                    **prediction_style(s[1]))
    if source == "sigma":
        ax.set_xlabel("σ of the Gaussian noise added to the test inputs (0 = clean)")
    else:
        ax.set_xlabel("gaussian_noise corruption severity (0 = clean; per-channel σ "
                      + ", ".join(f"{s:g}" for s in _CORRUPTION_SIGMA[:3]) + " at 1-3)")
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    ax.set_title(f"{title}: accuracy under test-time Gaussian noise", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# --- OOD -------------------------------------------------------------------------------------
def plot_ood(evaluations: Evaluations, title: str, path: Path,
             order: Sequence[str] = ()) -> Path | None:
    """OOD AUROC, one panel per (out-of-distribution set, score), wrapped three to a row; in a
    panel one point per (method, prediction) with its std over seeds."""
    series = series_of(evaluations, order)
    groups = sorted({(o.get("out_dataset"), o.get("score")) for evs in evaluations.values()
                     for e in evs for o in e.get("ood") or [] if isinstance(o, dict)
                     and isinstance(o.get("auroc"), (int, float))},
                    key=lambda g: (str(g[0]), str(g[1])))
    if not groups or not series:
        return None
    in_ds = next((o.get("in_dataset") for evs in evaluations.values() for e in evs
                  for o in e.get("ood") or [] if isinstance(o, dict)), "?")
    fig, axes = panel_grid(len(groups), panel_w=3.5, panel_h=2.9)
    for ax, (out, score) in zip(axes, groups):
        xs, lo = [], 1.0
        for i, s in enumerate(series):
            vals = _vals(evaluations[s[0]], s[1], lambda e, p: next(
                o["auroc"] for o in e["ood"] if o.get("prediction") == p
                and (o.get("out_dataset"), o.get("score")) == (out, score)))
            if not vals:
                continue
            m, sd = _ms(vals)
            lo = min(lo, m - sd)
            xs.append(i)
            ax.errorbar(i, m, yerr=sd, color=method_colour(s[0]), capsize=2, ms=5,
                        marker=prediction_style(s[1])["marker"], ls="none",
                        mfc="white" if s[1] == "sampled" else method_colour(s[0]))
        ax.set_xticks(range(len(series)), [_tick(s) for s in series], rotation=45, ha="right",
                      fontsize=7)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_ylim(axis_floor(lo, 1.0, max(0.0, min(0.5, lo) - 0.05)), 1.0)
        ax.set_title(f"vs {out}, score {score}", fontsize=9)
        ax.set_ylabel("AUROC")
        ax.grid(axis="y", alpha=0.3)
        mark_truncated_axis(ax)
    fig.suptitle(f"{title}: OOD detection, in-distribution {in_ds} (dotted: chance; "
                 "filled = deterministic, open = sampled)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# --- calibration error, smoothness, corruptions ----------------------------------------------
def plot_calibration_error(evaluations: Evaluations, title: str, path: Path,
                           order: Sequence[str] = ()) -> Path | None:
    """ECE (%) per (method, prediction), bars from zero with the std over seeds."""
    series = [s for s in series_of(evaluations, order)
              if _vals(evaluations[s[0]], s[1], lambda e, p: e["calibration"][p]["ece"])]
    if not series:
        return None
    fig, axes = panel_grid(1, panel_w=min(10.0, 1.5 + 0.55 * len(series)), panel_h=2.8)
    ax = axes[0]
    for i, s in enumerate(series):
        m, sd = _ms(_vals(evaluations[s[0]], s[1], lambda e, p: e["calibration"][p]["ece"]))
        ax.bar(i, 100 * m, yerr=100 * sd, capsize=2, color=method_colour(s[0]),
               hatch="//" if s[1] == "sampled" else "", edgecolor="white")
    ax.set_xticks(range(len(series)), [_tick(s) for s in series], rotation=40, ha="right",
                  fontsize=7)
    ax.set_ylabel("ECE (%)")
    ax.set_title(f"{title}: expected calibration error (15 bins; lower is better; "
                 "hatched = sampled)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_smoothness(evaluations: Evaluations, title: str, path: Path,
                    order: Sequence[str] = ()) -> Path | None:
    """Smoothness measures (lower is smoother), one panel per measure, a point per (method,
    prediction) with its std over seeds, log y axis where every value is positive."""
    series = series_of(evaluations, order)

    def get(key: str) -> Callable[[dict[str, Any], str], Any]:
        def fn(e: dict[str, Any], p: str) -> Any:
            v = e["smoothness"][p][key]
            return v["mean"] if isinstance(v, dict) else v
        return fn

    present = [k for k in _SMOOTH_LABELS
               if any(_vals(evaluations[s[0]], s[1], get(k)) for s in series)]
    if not present:
        return None
    fig, axes = panel_grid(len(present), panel_w=3.4, panel_h=2.7)
    for ax, key in zip(axes, present):
        allv = []
        for i, s in enumerate(series):
            vals = _vals(evaluations[s[0]], s[1], get(key))
            if not vals:
                continue
            m, sd = _ms(vals)
            allv += vals
            ax.errorbar(i, m, yerr=sd, color=method_colour(s[0]), capsize=2, ms=5, ls="none",
                        marker=prediction_style(s[1])["marker"],
                        mfc="white" if s[1] == "sampled" else method_colour(s[0]))
        if allv and min(allv) > 0:
            ax.set_yscale("log")
        else:
            ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(series)), [_tick(s) for s in series], rotation=45, ha="right",
                      fontsize=7)
        ax.set_title(_SMOOTH_LABELS[key], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title}: smoothness (lower is smoother; filled = deterministic, open = "
                 "sampled)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_corruptions(evaluations: Evaluations, title: str, path: Path,
                     order: Sequence[str] = ()) -> Path | None:
    """Heat map of accuracy (%) per (method, prediction) and corruption, mean over severities
    and seeds (no method colours: the colour scale is accuracy)."""
    import numpy as np
    series = series_of(evaluations, order)
    names: list[str] = []
    for evs in evaluations.values():
        for e in evs:
            for c in e.get("corruptions") or []:
                n = c.get("corruption") if isinstance(c, dict) else None
                if n and n != "mean" and n not in names:
                    names.append(n)
    if not names or not series:
        return None
    mat = np.full((len(series), len(names)), np.nan)
    for i, s in enumerate(series):
        for j, nm in enumerate(names):
            vals = [c["accuracy"] for e in evaluations[s[0]] for c in e.get("corruptions") or []
                    if isinstance(c, dict) and c.get("corruption") == nm
                    and c.get("prediction") == s[1] and isinstance(c.get("accuracy"), (int, float))]
            if vals:
                mat[i, j] = 100 * float(np.mean(vals))
    plt_w = min(10.5, 2.5 + 0.5 * len(names))
    fig, axes = panel_grid(1, panel_w=plt_w, panel_h=1.4 + 0.32 * len(series))
    ax = axes[0]
    im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(series)), [_label(s) for s in series], fontsize=7)
    annotate_percent_cells(ax, mat)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ax.set_title(f"{title}: accuracy under corruption (mean over severities and seeds)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
