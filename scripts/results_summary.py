"""Build docs/results/summary.json (one row per headline measurement) and the table that opens
docs/results/README.md, from the committed result files only.

Sources (each row names its files):
  variance_study_tuned20   docs/results/variance_study/tuned20/{none,gaussian}/compare_results.json
                           (MLP from scratch, every arm tuned with 20 trials, 8 seeds)
  dose_response            docs/results/dose_response/<arch>.json (scripts/dose_response.py:
                           learned vs frozen variances on a shared grid of starting levels)

Holm correction: within each study, over the study's headline tests (every arm against
standard, for every condition and metric of the study), shown beside the raw p.

Run:  PYTHONPATH=src .venv/bin/python scripts/results_summary.py [--check]
``--check`` rebuilds in memory and fails if the committed summary.json differs (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from dipnet.experiments.stats import holm
from dipnet.fileio import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
SUMMARY = RESULTS / "summary.json"
ARCHITECTURES = ("mlp", "resnet", "vit", "text_transformer", "llm")
FIELDS = ("study", "architecture", "pretrained", "condition", "arm", "metric", "mean", "ci_low",
          "ci_high", "n_seeds", "p_vs_standard", "p_holm", "recipe", "replicate", "commit",
          "command", "files")
ARCH_OF_MODEL = {"mlp": "mlp", "resnet8": "resnet", "resnet20": "resnet", "resnet": "resnet",
                 "vit": "vit"}
TABLE_START = "<!-- summary table: scripts/results_summary.py -->"
TABLE_END = "<!-- end summary table -->"


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def tuned20_rows() -> list[dict[str, Any]]:
    """The 20-trial tuned variance study: test accuracy of every arm, each condition."""
    rows: list[dict[str, Any]] = []
    for condition in ("none", "gaussian"):
        path = RESULTS / "variance_study" / "tuned20" / condition / "compare_results.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        inv = d["provenance"]["invocations"][0]
        params = d["sweep"].get("method_params", {})
        tests = {t["method"]: t for t in d["paired_tests"] if t["metric"] == "test_accuracy"}
        for agg in d["aggregates"]:
            arm, s = agg["method"], agg["test_accuracy"]
            t = tests.get(arm)
            rows.append({
                "study": "variance_study_tuned20", "architecture": "mlp", "pretrained": False,
                "condition": "clean" if condition == "none" else "gaussian_fixed",
                "arm": arm, "metric": "test_accuracy", "mean": _num(s["mean"]),
                "ci_low": _num(s["ci_low"]), "ci_high": _num(s["ci_high"]),
                "n_seeds": int(s["n"]),
                "p_vs_standard": None if t is None else _num(t["t_p"]),
                "diff_vs_standard": None if t is None else _num(t["mean_diff"]),
                "diff_ci": None if t is None else [_num(t["ci_low"]), _num(t["ci_high"])],
                "recipe": dict(params.get(arm, {})), "replicate": 0,
                "commit": inv.get("git_commit"), "command": inv.get("command"),
                "files": [_rel(path), _rel(path.parent / "best.yaml")]})
    return rows


DOSE_METRICS = {"test_accuracy": "test_accuracy", "pgd_linf_0.05": "pgd_eot_linf_0.05",
                "corruptions": "corruption_accuracy", "ece": "ece",
                "certified_l2_0.1": "certified_accuracy_l2_0.1",
                "certified_l2_0.25": "certified_accuracy_l2_0.25"}


def dose_rows() -> list[dict[str, Any]]:
    """Every arm of every dose-response study, each metric, against standard."""
    rows: list[dict[str, Any]] = []
    for path in sorted((RESULTS / "dose_response").glob("*.json")):
        d = json.loads(path.read_text())
        arch = ARCH_OF_MODEL.get(d["preset"]["model"])
        if arch is None or d["preset"]["dataset"] == "digits":
            continue
        for condition, by_metric in d["analysis"].items():
            for metric, name in DOSE_METRICS.items():
                cell = by_metric.get(metric)
                if not cell:
                    continue
                for arm, s in cell["arms"].items():
                    t = cell["vs_standard"].get(arm)
                    base, _, rest = arm.partition("@")
                    recipe: dict[str, Any] = {}
                    if rest:
                        level, _, temp = rest.partition(",T=")
                        recipe = {"init_scale": float(level),
                                  "learn_variance": base == "dipnet"}
                        if temp:
                            recipe["barrier_temperature"] = float(temp)
                    rows.append({
                        "study": "dose_response", "architecture": arch, "pretrained": False,
                        "condition": "clean" if condition == "none" else "gaussian_fixed",
                        "arm": base, "metric": name, "mean": _num(s["mean"]),
                        "ci_low": _num(s["ci_low"]), "ci_high": _num(s["ci_high"]),
                        "n_seeds": int(s["n"]),
                        "p_vs_standard": None if t is None else _num(t["p"]),
                        "diff_vs_standard": None if t is None else _num(t["diff"]),
                        "diff_ci": None if t is None else [_num(t["ci_low"]),
                                                           _num(t["ci_high"])],
                        "recipe": recipe, "replicate": None,
                        "commit": ",".join(d.get("commits") or []) or None,
                        "command": d.get("command"), "files": [_rel(path)]})
    return rows


def build() -> list[dict[str, Any]]:
    """Every row, with Holm-corrected p-values per study."""
    rows = tuned20_rows() + dose_rows()
    for study in {r["study"] for r in rows}:
        mine = [r for r in rows if r["study"] == study and r["p_vs_standard"] is not None]
        for r, p in zip(mine, holm([r["p_vs_standard"] for r in mine])):
            r["p_holm"] = _num(p)
    for r in rows:
        r.setdefault("p_holm", None)
    return rows


def _pp(r: dict[str, Any]) -> str:
    if r.get("diff_vs_standard") is None:
        return "-"
    lo, hi = r["diff_ci"]
    star = "*" if (r["p_holm"] is not None and r["p_holm"] < 0.05) else ""
    ci = "" if lo is None else f" [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    return f"{100 * r['diff_vs_standard']:+.2f}{ci}{star}"


def table(rows: list[dict[str, Any]]) -> str:
    """architecture x condition x metric: dipnet and fixed_noise against standard. For the
    dose-response rows, each arm at its best level on VALIDATION is not available (the study
    picks no level), so the table shows the level range: the best and worst level's effect."""
    lines = [TABLE_START, "",
             "| study | architecture | condition | metric | dipnet - standard (pp, 95% CI) | "
             "fixed_noise - standard | n seeds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    keys = sorted({(r["study"], r["architecture"], r["condition"], r["metric"]) for r in rows},
                  key=lambda k: (k[0] != "dose_response", k))
    for key in keys:
        mine = [r for r in rows if (r["study"], r["architecture"], r["condition"],
                                    r["metric"]) == key]

        def cell(arm: str) -> str:
            sel = [r for r in mine if r["arm"] == arm and "barrier_temperature" not in r["recipe"]]
            if not sel:
                return "-"
            if len(sel) == 1:
                return _pp(sel[0])
            return " / ".join(f"@{r['recipe']['init_scale']:g}: {_pp(r)}" for r in sel)

        n = max((r["n_seeds"] for r in mine), default=0)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {cell('dipnet')} | "
                     f"{cell('fixed_noise')} | {n} |")
    lines += ["", "`*`: Holm-corrected p < 0.05 within the study (raw and corrected p for every "
              "row in `summary.json`). ECE: lower is better; every other metric: higher.", "",
              TABLE_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true",
                   help="fail if the committed summary.json differs from a rebuild")
    args = p.parse_args(argv)
    rows = build()
    doc = {"schema": list(FIELDS), "rows": rows}
    if args.check:
        committed = json.loads(SUMMARY.read_text())
        if json.loads(json.dumps(doc)) != committed:
            print("docs/results/summary.json is stale: run scripts/results_summary.py",
                  file=sys.stderr)
            return 1
        return 0
    atomic_write_json(SUMMARY, doc)
    readme = RESULTS / "README.md"
    text = readme.read_text()
    block = table(rows)
    if TABLE_START in text:
        head, _, rest = text.partition(TABLE_START)
        _, _, tail = rest.partition(TABLE_END)
        text = head + block + tail
    else:
        text = block + "\n\n" + text
    atomic_write_text(readme, text)
    print(f"wrote {_rel(SUMMARY)} ({len(rows)} rows) and the table in {_rel(readme)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
