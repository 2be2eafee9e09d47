"""The report's test-time evaluation section: tables and plots from many evaluation.json files.

(Formerly ``dipnet.evaluation.report`` and ``dipnet.experiments.report_eval_tables``.)

`render_section(evaluations, out_dir)` takes, per method, the evaluation dicts of its seeds
(one per seed, as written by `evaluate_run`) and returns Markdown that refers to PNGs it writes
into ``out_dir``: accuracy against epsilon (error bars over seeds), a corruption heat map, OOD
AUROC bars, smoothness bars and calibration. Every number is a mean ± sample std over seeds;
where a ``standard`` method is present, headline cells also give the paired t-test p-value
against it (seeds matched by the ``seed`` field).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dipnet.evaluation.settings import ATTACKS
from dipnet.experiments.report.stats import format_mean_std, format_p, paired_by_seed, summarize

Series = tuple[str, str]  # (method, prediction)

SMOOTHNESS_MEASURES: tuple[tuple[str, str], ...] = (
    ("loss_grad_norm", "input-gradient norm of the loss"),
    ("logit_jacobian_spectral", "logit Jacobian spectral norm"),
    ("lipschitz_adversarial", "local Lipschitz (adversarial pairs)"),
    ("input_hessian_spectral", "input-Hessian spectral norm"),
    ("weight_hessian_trace", "weight-Hessian trace"),
    ("weight_hessian_top_eigenvalue", "weight-Hessian top eigenvalue"),
    ("output_variance", "output variance over trajectories"),
)
_ATTACK_TITLES = {name: attack.title for name, attack in ATTACKS.items()}
_NORM_TITLES = {"linf": "L-inf", "l2": "L2"}
# Every (attack, norm) panel the suite can produce, in the order the report shows them.
_ATTACK_PANELS = tuple((a, n, f"{_ATTACK_TITLES[a]}, {_NORM_TITLES[n]}")
                       for a in _ATTACK_TITLES for n in _NORM_TITLES)
_PANELS_PER_ROW = 4


def _order(methods: Iterable[str]) -> list[str]:
    pref = {"standard": 0, "dipnet": 1}
    return sorted(methods, key=lambda m: (pref.get(m, 2), m))


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    # (mean, sample std, n) by the report's one rule (std NaN for one value).
    s = summarize(values)
    return s.mean, s.std, s.n


def _cell(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    return format_mean_std(summarize(values), scale, digits)


def _paired_p(a: dict[int, float], b: dict[int, float]) -> str:
    """Two-sided paired t-test p over the seeds both have ('-' if undefined)."""
    if len(set(a) & set(b)) < 2:
        return "-"
    return format_p(paired_by_seed(a, b).t_p)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _label(s: Series) -> str:
    return f"{s[0]} ({s[1]})"


class _Index:
    """Per-series, per-seed lookups into the evaluation dicts."""

    def __init__(self, evaluations: dict[str, list[dict]]) -> None:
        self.evals = {m: [e for e in evs if isinstance(e, dict)] for m, evs in evaluations.items()}
        self.methods = _order(m for m, evs in self.evals.items() if evs)
        self.series: list[Series] = []
        for m in self.methods:
            preds: list[str] = []
            for e in self.evals[m]:
                for p in e.get("predictions") or list((e.get("clean") or {}).keys()):
                    if p not in preds:
                        preds.append(p)
            self.series += [(m, p) for p in preds]

    def per_seed(self, s: Series, fn) -> dict[int, float]:
        """{seed: fn(evaluation, prediction)} skipping missing values."""
        out: dict[int, float] = {}
        for i, e in enumerate(self.evals[s[0]]):
            try:
                v = fn(e, s[1])
            except (KeyError, TypeError, IndexError, StopIteration):
                v = None
            if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
                out[int(e.get("seed", i))] = float(v)
        return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(s: Series, colours: dict[str, Any]) -> dict[str, Any]:
    return {"color": colours[s[0]], "linestyle": "-" if s[1] == "deterministic" else "--",
            "marker": "o" if s[1] == "deterministic" else "s"}


def _attack_rows(e: dict, pred: str, attack: str, norm: str) -> dict[float, float]:
    return {float(a["eps"]): a["accuracy"] for a in e.get("attacks") or []
            if a.get("prediction") == pred and a.get("attack") == attack and a.get("norm") == norm}


def annotate_percent_cells(ax: Any, mat: np.ndarray) -> None:
    """Write each finite cell of a 0-100 % heat map on it (no decimals), white on dark cells."""
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if math.isfinite(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if mat[i, j] < 60 else "black")


@dataclass
class _Section:
    """What every part of the section reads: the index, the paired baseline and where (if
    anywhere) its figures go."""

    idx: _Index
    base: Series | None
    out_dir: Path | None
    plt: Any = None
    colours: dict[str, Any] = field(default_factory=dict)

    @property
    def draw(self) -> bool:
        return self.out_dir is not None

    def save(self, fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(self.out_dir / name, dpi=110)
        self.plt.close(fig)

    def with_p(self, s: Series, vals: dict[int, float], get: Callable[..., Any]) -> str:
        """The cell of ``vals`` (%, one decimal), with the paired p against the baseline."""
        cell = _cell(list(vals.values()), 100, 1)
        if self.base and s != self.base and vals:
            p = _paired_p(vals, self.idx.per_seed(self.base, get))
            cell += f" (p {p})" if p != "-" else ""
        return cell


def render_section(evaluations: dict[str, list[dict]], out_dir: Path | None) -> str:
    """Markdown for the evaluation section, with its PNGs written into ``out_dir``.

    Args:
        evaluations: method name -> list of evaluation.json dicts (one per seed).
        out_dir: folder for the figures (created); the Markdown links them by file name.
            None: the tables and notes only, no figure drawn (the sweep report draws its
            own, `dipnet.experiments.report.eval_figures`).
    Returns:
        Markdown text (tables, figure links, settings and notes); an explanatory line if
        there is nothing to show.
    """
    idx = _Index(evaluations)
    if not idx.series:
        return "_No evaluation.json found: run `dipnet evaluate RUN_DIR` on the runs first._"
    base = ("standard", "deterministic") if ("standard", "deterministic") in idx.series else None
    sec = _Section(idx, base, None if out_dir is None else Path(out_dir))
    if sec.out_dir is not None:
        sec.out_dir.mkdir(parents=True, exist_ok=True)
        sec.plt = _plt()
        cmap = sec.plt.get_cmap("tab10")
        sec.colours = {m: cmap(i % 10) for i, m in enumerate(idx.methods)}
    n_seeds = {m: len(idx.evals[m]) for m in idx.methods}
    md = ["Seeds per method: " + ", ".join(f"{m} {n}" for m, n in n_seeds.items())
          + ". Deterministic = one pass with any noise off; sampled = average of k "
          "trajectories' probabilities. Cells: mean ± std over seeds"
          + ("; p: paired t-test against standard (deterministic), seeds matched." if base else ".")]
    for part in (_clean_part, _attack_part, _corruption_part, _ood_part, _smoothness_part,
                 _cost_part):
        md += part(sec)
    return "\n".join(md)


# ---------------------------------------------------------------- clean + calibration
def _clean_accuracy(e: dict, p: str) -> float:
    return e["clean"][p]["accuracy"]


def _cal(key: str) -> Callable[[dict, str], Any]:
    return lambda e, p: e["calibration"][p][key]


def _clean_part(sec: _Section) -> list[str]:
    """Clean accuracy and calibration: the table, and the ECE bars."""
    idx, base = sec.idx, sec.base
    rows = []
    for s in idx.series:
        acc = idx.per_seed(s, _clean_accuracy)
        rows.append([s[0], s[1], _cell(list(acc.values()), 100),
                     _paired_p(acc, idx.per_seed(base, _clean_accuracy))
                     if base and s != base else "",
                     _cell(list(idx.per_seed(s, _cal("nll")).values()), digits=3),
                     _cell(list(idx.per_seed(s, _cal("ece")).values()), 100),
                     _cell(list(idx.per_seed(s, _cal("brier")).values()), digits=3)])
    md = ["", "#### Clean accuracy and calibration", "",
          _md_table(["method", "prediction", "accuracy %", "p", "NLL", "ECE % (15 bins)", "Brier"], rows)]
    if sec.draw:
        fig, ax = sec.plt.subplots(figsize=(max(4, 0.9 * len(idx.series) + 2), 3))
        for i, s in enumerate(idx.series):
            m, sd, _ = _mean_std(list(idx.per_seed(s, _cal("ece")).values()))
            ax.bar(i, 100 * m, yerr=None if not math.isfinite(sd) else 100 * sd, color=sec.colours[s[0]],
                   hatch="" if s[1] == "deterministic" else "//", capsize=3)
        ax.set_xticks(range(len(idx.series)), [_label(s) for s in idx.series], rotation=30, ha="right")
        ax.set_ylabel("ECE (%)")
        ax.set_title("Expected calibration error (lower is better)")
        sec.save(fig, "calibration.png")
        md += ["", "![ECE per method](calibration.png)"]
    return md


# ---------------------------------------------------------------- attacks
def _attack_part(sec: _Section) -> list[str]:
    """One accuracy table per (attack, norm) that ran, the curves, and how they were run."""
    idx = sec.idx
    panels = [p for p in _ATTACK_PANELS if any(
        _attack_rows(e, s[1], p[0], p[1]) for s in idx.series for e in idx.evals[s[0]])]
    if not panels:
        return []
    if sec.draw:
        _draw_attacks(sec, panels)
    md = ["", "#### Adversarial robustness (accuracy % under attack)"]
    md += ["", "![accuracy against epsilon](attacks.png)"] if sec.draw else []
    for attack, norm, title in panels:
        eps = sorted({k for s in idx.series for e in idx.evals[s[0]]
                      for k in _attack_rows(e, s[1], attack, norm) if k > 0})
        if not eps:
            continue
        rows = []
        for s in idx.series:
            cells = []
            for x in eps:
                def get(e: dict, p: str, x: float = x) -> float | None:
                    return _attack_rows(e, p, attack, norm).get(x)
                cells.append(sec.with_p(s, idx.per_seed(s, get), get))
            rows.append([_label(s), *cells])
        md += ["", f"{title}:", "", _md_table(["method (prediction)", *[f"eps {x:g}" for x in eps]], rows)]
    return md + ["", _attack_settings(sec, panels)]


def _draw_attacks(sec: _Section, panels: list[tuple[str, str, str]]) -> None:
    idx = sec.idx
    cols = min(len(panels), _PANELS_PER_ROW)
    nrows = -(-len(panels) // cols)
    fig, axes = sec.plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for ax, (attack, norm, title) in zip(flat, panels):
        for s in idx.series:
            eps = sorted({k for e in idx.evals[s[0]] for k in _attack_rows(e, s[1], attack, norm)})
            if not eps:
                continue
            stats = [_mean_std([_attack_rows(e, s[1], attack, norm).get(x) for e in idx.evals[s[0]]])
                     for x in eps]
            ax.errorbar(eps, [100 * a for a, _, _ in stats],
                        yerr=[0 if not math.isfinite(sd) else 100 * sd for _, sd, _ in stats],
                        label=_label(s), capsize=2, **_style(s, sec.colours))
        ax.set_title(title)
        ax.set_xlabel("epsilon")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    flat[len(panels) - 1].legend(fontsize=7)
    sec.save(fig, "attacks.png")


def _attack_settings(sec: _Section, panels: list[tuple[str, str, str]]) -> str:
    # the attacks' budgets, read from the first evaluation (every run of a sweep shares them)
    ev0 = next(e for s in sec.idx.series for e in sec.idx.evals[s[0]])
    st = ev0.get("settings") or {}
    text = (f"Attacks on {(ev0.get('n_points') or {}).get('attacks', '?')} test points; PGD "
            f"{st.get('pgd_steps', '?')} steps (step 2.5·eps/steps), {st.get('restarts', '?')} "
            f"random start(s), losses {', '.join(st.get('pgd_losses') or ['ce'])}; sampled "
            f"predictions attacked with EOT ({st.get('eot_samples') or 'k'} trajectories per "
            "gradient step) and scored with fresh noise. Deterministic curves are cumulative "
            "over epsilon (an example broken at a smaller epsilon stays broken).")
    if any(attack not in ("fgsm", "pgd") for attack, _, _ in panels):
        text += (f" APGD and Square (the Adversarial Robustness Toolbox) on the first "
                 f"{(ev0.get('n_points') or {}).get('strong_attacks', '?')} of those points,"
                 f" {st.get('apgd_steps', '?')} APGD steps, {st.get('square_queries', '?')}"
                 " Square queries; sampled predictions with EOT over "
                 f"{st.get('strong_eot_samples') or st.get('eot_samples') or 'k'} "
                 "trajectories per call (AutoAttack's version for randomised defences).")
    return text


# ---------------------------------------------------------------- corruptions
def _corr_rows(e: dict, pred: str) -> list[dict]:
    return [c for c in e.get("corruptions") or [] if c.get("prediction") == pred]


def _corr_mean(e: dict, p: str) -> float:
    return next(c["accuracy"] for c in _corr_rows(e, p) if c["corruption"] == "mean")


def _corruption_part(sec: _Section) -> list[str]:
    """Mean accuracy under corruption and per severity, and the heat map."""
    idx = sec.idx
    names = []
    for s in idx.series:
        for e in idx.evals[s[0]]:
            for c in _corr_rows(e, s[1]):
                if c["corruption"] != "mean" and c["corruption"] not in names:
                    names.append(c["corruption"])
    if not names:
        return []
    if sec.draw:
        _draw_corruptions(sec, names)
    sevs = sorted({c["severity"] for s in idx.series for e in idx.evals[s[0]]
                   for c in _corr_rows(e, s[1]) if c.get("severity") is not None})
    rows = []
    for s in idx.series:
        cell = sec.with_p(s, idx.per_seed(s, _corr_mean), _corr_mean)
        per_sev = [_cell(list(idx.per_seed(s, lambda e, p, v=v: float(np.mean(
            [c["accuracy"] for c in _corr_rows(e, p) if c.get("severity") == v]))).values()), 100, 1)
            for v in sevs]
        rows.append([_label(s), cell, *per_sev])
    md = ["", "#### Common corruptions", "",
          _md_table(["method (prediction)", "mean accuracy %", *[f"severity {v}" for v in sevs]], rows)]
    return md + (["", "![corruption heat map](corruptions.png)"] if sec.draw else [])


def _draw_corruptions(sec: _Section, names: list[str]) -> None:
    idx = sec.idx
    mat = np.full((len(idx.series), len(names)), np.nan)
    for i, s in enumerate(idx.series):
        for j, nm in enumerate(names):
            vals = [c["accuracy"] for e in idx.evals[s[0]] for c in _corr_rows(e, s[1])
                    if c["corruption"] == nm]
            if vals:
                mat[i, j] = 100 * float(np.mean(vals))
    fig, ax = sec.plt.subplots(figsize=(0.55 * len(names) + 3, 0.45 * len(idx.series) + 1.8))
    im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(idx.series)), [_label(s) for s in idx.series], fontsize=8)
    annotate_percent_cells(ax, mat)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ax.set_title("Accuracy under corruption (mean over severities and seeds)")
    sec.save(fig, "corruptions.png")


# ---------------------------------------------------------------- OOD
OodGroup = tuple[str, str, str]  # (in_dataset, out_dataset, score)


def _auroc(g: OodGroup) -> Callable[[dict, str], float]:
    return lambda e, p: next(o["auroc"] for o in e["ood"] if o["prediction"] == p
                             and (o["in_dataset"], o["out_dataset"], o["score"]) == g)


def _ood_part(sec: _Section) -> list[str]:
    """AUROC per (in, out, score) group: the table and the bars."""
    idx = sec.idx
    groups: list[OodGroup] = []
    for s in idx.series:
        for e in idx.evals[s[0]]:
            for o in e.get("ood") or []:
                g = (o["in_dataset"], o["out_dataset"], o["score"])
                if g not in groups:
                    groups.append(g)
    if not groups:
        return []
    if sec.draw:
        _draw_ood(sec, groups)
    rows = []
    for s in idx.series:
        cells = []
        for g in groups:
            vals = idx.per_seed(s, _auroc(g))
            cells.append(_cell(list(vals.values()), 1, 3) if vals else "-")
        rows.append([_label(s), *cells])
    md = ["", "#### Out-of-distribution detection (AUROC)", "",
          _md_table(["method (prediction)", *[f"vs {g[1]} ({g[2]})" for g in groups]], rows)]
    md += ["", "![OOD AUROC](ood.png)"] if sec.draw else []
    return md + ["", "Scores: msp = max softmax probability, entropy = minus the predictive "
                 "entropy, mutual_information = minus the mutual information (sampled "
                 "predictions only)."]


def _draw_ood(sec: _Section, groups: list[OodGroup]) -> None:
    idx = sec.idx
    fig, ax = sec.plt.subplots(figsize=(max(6, 1.1 * len(groups) * max(1, len(idx.series)) / 2), 3.6))
    width = 0.8 / len(idx.series)
    for i, s in enumerate(idx.series):
        ms = [_mean_std(list(idx.per_seed(s, _auroc(g)).values())) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, [m for m, _, _ in ms], width,
               yerr=[0 if not math.isfinite(sd) else sd for _, sd, _ in ms], capsize=2,
               color=sec.colours[s[0]], hatch="" if s[1] == "deterministic" else "//",
               label=_label(s))
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2,
                  [f"vs {g[1]}\n{g[2]}" for g in groups], fontsize=7)
    ax.set_ylabel("AUROC")
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.legend(fontsize=7)
    ax.set_title(f"OOD detection (in-distribution: {groups[0][0]})")
    sec.save(fig, "ood.png")


# ---------------------------------------------------------------- smoothness
def _smooth(key: str) -> Callable[[dict, str], Any]:
    def get(e: dict, p: str) -> Any:
        v = e["smoothness"][p][key]
        return v["mean"] if isinstance(v, dict) else v
    return get


def _smoothness_part(sec: _Section) -> list[str]:
    """Every smoothness measure that ran: the table and one bar panel each."""
    idx = sec.idx
    present = [(k, t) for k, t in SMOOTHNESS_MEASURES
               if any(idx.per_seed(s, _smooth(k)) for s in idx.series)]
    if not present:
        return []
    if sec.draw:
        _draw_smoothness(sec, present)
    rows = [[_label(s), *[_cell(list(idx.per_seed(s, _smooth(k)).values()), 1, 3) for k, _ in present]]
            for s in idx.series]
    md = ["", "#### Smoothness (the theory's quantities, docs/method.md; lower is smoother)", "",
          _md_table(["method (prediction)", *[t for _, t in present]], rows)]
    md += ["", "![smoothness measures](smoothness.png)"] if sec.draw else []
    return md + ["", "Per-example measures are means over the evaluated test points; a sampled "
                 "prediction is measured as the average of its k trajectories with the noise "
                 "held fixed (see docs/evaluation.md). Weight-Hessian measures use a training "
                 "batch."]


def _draw_smoothness(sec: _Section, present: list[tuple[str, str]]) -> None:
    idx = sec.idx
    cols = min(4, len(present))
    nrows = math.ceil(len(present) / cols)
    fig, axes = sec.plt.subplots(nrows, cols, figsize=(3.3 * cols, 2.9 * nrows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, present):
        for i, s in enumerate(idx.series):
            m, sd, n = _mean_std(list(idx.per_seed(s, _smooth(key)).values()))
            if n:
                ax.bar(i, m, yerr=None if not math.isfinite(sd) else sd, capsize=2,
                       color=sec.colours[s[0]], hatch="" if s[1] == "deterministic" else "//")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(len(idx.series)), [_label(s) for s in idx.series], rotation=45,
                      ha="right", fontsize=6)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    sec.save(fig, "smoothness.png")


# ---------------------------------------------------------------- cost and notes
def _cost_part(sec: _Section) -> list[str]:
    """Wall-clock seconds per part, the suite's environment, and every run's notes."""
    idx = sec.idx
    parts = ["clean", "attacks", "corruptions", "ood", "smoothness", "total"]
    rows = [[m, *[_cell([e.get("timing", {}).get(p) for e in idx.evals[m]], 1, 1) for p in parts]]
            for m in idx.methods]
    md = ["", "#### Evaluation cost (wall-clock seconds per run)", "",
          _md_table(["method", *parts], rows)]
    ev0 = idx.evals[idx.methods[0]][0]
    env = ev0.get("environment") or {}
    md += ["", f"Suite `{ev0.get('suite', '?')}`, torch {env.get('torch', '?')} on "
           f"{env.get('device', '?')} ({env.get('threads', '?')} threads); points per part: "
           + ", ".join(f"{k} {v}" for k, v in (ev0.get("n_points") or {}).items()) + "."]
    notes = sorted({n for m in idx.methods for e in idx.evals[m] for n in e.get("notes") or []})
    if notes:
        md += ["", "Notes:", *[f"- {n}" for n in notes]]
    return md
