"""Build docs/results/summary.json (one row per headline measurement) and the table that opens
docs/results/README.md, from the committed result files only.

Sources (each row names its files):
  variance_study_tuned20   docs/results/variance_study/tuned20/{none,gaussian}/compare_results.json
                           (MLP from scratch, every arm tuned with 20 trials, 8 seeds)
  dose_response            docs/results/dose_response/<arch>.json (scripts/dose_response.py:
                           learned vs frozen variances on a shared grid of starting levels)
  vit_finetune             docs/results/vit/results.json (`dipnet compare` of the pretrained
                           Hugging Face ViT fine-tuned on Fashion-MNIST; the scorecard's
                           columns: clean and perturbed-training accuracy, PGD with EOT for
                           sampled predictions, corruptions, ECE)
  text                     docs/results/text/results.json (dipnet text-classify: MiniLM
                           fine-tuned on SpamAssassin, both placements, learned and frozen)
  math                     docs/results/math/results.json (dipnet math: Gemma-3-270M + LoRA)

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

from dipnet import DIPConfig
from dipnet.experiments.report.scorecard import BASELINE, CLEAN, COLUMNS
from dipnet.experiments.report.stats import holm, paired_test, summarize
from dipnet._util.fileio import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
SUMMARY = RESULTS / "summary.json"
ARCHITECTURES = ("mlp", "resnet", "vit", "text_transformer", "llm")
FIELDS = ("study", "architecture", "pretrained", "condition", "arm", "metric", "mean", "ci_low",
          "ci_high", "n_seeds", "p_vs_standard", "p_holm", "recipe", "replicate", "commit",
          "command", "files")
ARCH_OF_MODEL = {"mlp": "mlp", "resnet8": "resnet", "resnet20": "resnet", "resnet": "resnet",
                 "vit": "vit", "hf_vit": "vit"}
TABLE_START = "<!-- summary table: scripts/results_summary.py -->"
TABLE_END = "<!-- end summary table -->"


def _condition(name: str) -> str:
    """The summary's name of a training condition: ``clean`` or ``gaussian_fixed``."""
    return "clean" if name in ("none", "clean") else "gaussian_fixed"


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def tuned20_rows() -> list[dict[str, Any]]:
    """The 20-trial tuned variance study: test accuracy of every arm, each condition."""
    return compare_rows("variance_study_tuned20", [
        (condition, RESULTS / "variance_study" / "tuned20" / condition / "compare_results.json")
        for condition in ("none", "gaussian")])


def tune_objective_rows() -> list[dict[str, Any]]:
    """Every arm tuned for accuracy, then for the accuracy-robustness mix (clean data)."""
    return compare_rows("tune_objective", [
        (objective, RESULTS / "tune_objective" / objective / "results.json")
        for objective in ("accuracy", "mix")], condition_is_objective=True)


def compare_rows(study: str, sources: list[tuple[str, Path]],
                 condition_is_objective: bool = False) -> list[dict[str, Any]]:
    """Test accuracy of every arm of `dipnet compare` results (``results.json``), paired with
    standard, plus learned minus frozen paired by seed."""
    rows: list[dict[str, Any]] = []
    for condition, path in sources:
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
                "study": study, "architecture": "mlp", "pretrained": False,
                "condition": "clean" if condition_is_objective else _condition(condition),
                **({"tuning_objective": condition} if condition_is_objective else {}),
                "arm": arm, "metric": "test_accuracy", "mean": _num(s["mean"]),
                "ci_low": _num(s["ci_low"]), "ci_high": _num(s["ci_high"]),
                "n_seeds": int(s["n"]),
                "p_vs_standard": None if t is None else _num(t["t_p"]),
                "diff_vs_standard": None if t is None else _num(t["mean_diff"]),
                "diff_ci": None if t is None else [_num(t["ci_low"]), _num(t["ci_high"])],
                "recipe": dict(params.get(arm, {})), "replicate": 0,
                "commit": inv.get("git_commit"), "command": inv.get("command"),
                "files": [_rel(path), _rel(path.parent / "best.yaml")]})
        by = {m: {r["seed"]: r["test_accuracy"] for r in d["runs"] if r["method"] == m}
              for m in ("dipnet", "fixed_noise")}
        seeds = sorted(set(by["dipnet"]) & set(by["fixed_noise"]))
        t = paired_test([by["dipnet"][k] for k in seeds], [by["fixed_noise"][k] for k in seeds])
        row = _lmf_row(study, "mlp", "none" if condition_is_objective else condition,
                       "test_accuracy", t.to_dict(), {"tuned": True}, 0, inv.get("git_commit"),
                       inv.get("command"), [_rel(path)])
        if condition_is_objective:
            row["tuning_objective"] = condition
        rows.append(row)
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
        pretrained = "weights" in d["preset"].get("model_params", {})
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
                        "study": "dose_response", "architecture": arch,
                        "pretrained": pretrained,
                        "condition": _condition(condition),
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
                for level, t in cell["learned_minus_frozen"].items():
                    rows.append(_lmf_row("dose_response", arch, condition, name, t,
                                         {"init_scale": float(level)}, None,
                                         ",".join(d.get("commits") or []) or None,
                                         d.get("command"), [_rel(path)], pretrained))
    return rows

#: The summary's metric name of each scorecard column (the perturbed-training column is test
#: accuracy under the perturbed condition).
SCORECARD_METRICS = {"clean": "test_accuracy", "perturbed": "test_accuracy",
                     "pgd": "pgd_eot_linf_0.05", "corruptions": "corruption_accuracy",
                     "ece": "ece"}


def vit_rows() -> list[dict[str, Any]]:
    """The pretrained Hugging Face ViT fine-tuned on Fashion-MNIST (configs/vit_finetune.yaml)."""
    return scorecard_rows("vit_finetune", "vit", True, RESULTS / "vit" / "results.json")


def scorecard_rows(study: str, arch: str, pretrained: bool, path: Path) -> list[dict[str, Any]]:
    """Every arm of a `dipnet compare` results.json on the scorecard's questions, read the way
    the scorecard reads them (`scorecard.COLUMNS`: each run's own prediction, so robustness of
    a sampled prediction is the EOT attack's): the arm's mean and CI over seeds, its paired
    test against standard, and learned minus frozen paired by seed."""
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    # every invocation that trained, evaluated or reported these runs, in order
    invs = d["provenance"]["invocations"]
    commits = list(dict.fromkeys(i.get("git_commit") for i in invs if i.get("git_commit")))
    commands = list(dict.fromkeys(i.get("command") for i in invs if i.get("command")))
    conds = sorted({r["train_perturbation"] for r in d["runs"]})
    perturbed = next((c for c in conds if c != CLEAN), None)
    rows: list[dict[str, Any]] = []
    for col in COLUMNS:
        cond = perturbed if col.condition == "perturbed" else CLEAN
        if cond is None or col.id not in SCORECARD_METRICS:
            continue
        by: dict[str, dict[int, float]] = {}
        for r in d["runs"]:
            key = col.key(r)
            if r["train_perturbation"] == cond and key and isinstance(r.get(key), (int, float)):
                by.setdefault(r["method"], {})[int(r["seed"])] = float(r[key])
        common = {"study": study, "architecture": arch, "pretrained": pretrained,
                  "condition": _condition(cond),
                  "metric": SCORECARD_METRICS[col.id], "replicate": None,
                  "commit": ",".join(commits) or None, "command": " && ".join(commands) or None,
                  "files": [_rel(path)]}
        base = by.get(BASELINE, {})
        for arm, vals in sorted(by.items()):
            s = summarize(list(vals.values()))
            seeds = sorted(set(vals) & set(base))
            t = None if arm == BASELINE or len(seeds) < 2 else paired_test(
                [vals[k] for k in seeds], [base[k] for k in seeds])
            rows.append({**common, "arm": arm, "mean": _num(s.mean), "ci_low": _num(s.ci_low),
                         "ci_high": _num(s.ci_high), "n_seeds": s.n,
                         "p_vs_standard": None if t is None else _num(t.t_p),
                         "diff_vs_standard": None if t is None else _num(t.mean_diff),
                         "diff_ci": None if t is None else [_num(t.ci_low), _num(t.ci_high)],
                         "recipe": dict(d["sweep"].get("method_params", {}).get(arm, {}))})
        if "dipnet" in by and "fixed_noise" in by:
            seeds = sorted(set(by["dipnet"]) & set(by["fixed_noise"]))
            t = paired_test([by["dipnet"][k] for k in seeds],
                            [by["fixed_noise"][k] for k in seeds])
            row = _lmf_row(study, arch, common["condition"], common["metric"], t.to_dict(),
                           {"init_scale": DIPConfig().init_scale,
                            **d["sweep"].get("method_params", {}).get("dipnet", {})}, None, common["commit"],
                           common["command"], common["files"], pretrained)
            rows.append(row)
    return rows


LMF = "dipnet-fixed_noise"
PROJECTED = ("dipnet", "fixed_noise", LMF)


def _lmf_row(study: str, arch: str, condition: str, metric: str, t: dict[str, Any],
             recipe: dict[str, Any], replicate: int | None, commit: str | None,
             command: str | None, files: list[str], pretrained: bool = False) -> dict[str, Any]:
    """A learned-minus-frozen row: ``mean`` is the paired difference, ``p_learned_vs_frozen``
    its paired test (no standard arm is involved: ``p_vs_standard`` is None)."""
    return {"study": study, "architecture": arch, "pretrained": pretrained,
            "condition": _condition(condition),
            "arm": LMF, "metric": metric, "mean": _num(t.get("diff", t.get("mean_diff"))),
            "ci_low": _num(t["ci_low"]), "ci_high": _num(t["ci_high"]), "n_seeds": int(t["n"]),
            "p_vs_standard": None, "p_learned_vs_frozen": _num(t.get("p", t.get("t_p"))),
            "recipe": recipe, "replicate": replicate, "commit": commit, "command": command,
            "files": files}


def replicate_rows() -> list[dict[str, Any]]:
    """The tuning replicates: each arm's test accuracy per replicate (no standard arm there:
    the headline is learned minus frozen, in the study's own page)."""
    path = RESULTS / "tune_replicates" / "replicates.json"
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    rows = []
    for rep in d["replicates"]:
        for arm in ("dipnet", "fixed_noise"):
            s = rep["test_accuracy"][arm]
            rows.append({
                "study": "tune_replicates", "architecture": "mlp", "pretrained": False,
                "condition": "clean", "arm": arm, "metric": "test_accuracy",
                "mean": _num(s["mean"]), "ci_low": _num(s["ci_low"]),
                "ci_high": _num(s["ci_high"]), "n_seeds": int(s["n"]), "p_vs_standard": None,
                "diff_vs_standard": None, "diff_ci": None, "recipe": rep["chosen"][arm],
                "replicate": rep["replicate"], "commit": rep.get("commit"),
                "command": d.get("command"), "files": [_rel(path)]})
        rows.append(_lmf_row("tune_replicates", "mlp", "clean", "test_accuracy",
                             rep["learned_minus_frozen"], {"tuned": True}, rep["replicate"],
                             rep.get("commit"), d.get("command"), [_rel(path)]))
    return rows


#: The Hugging Face studies: (study, architecture, results folder, accuracy key of the summary).
HF_STUDIES = (("text", "text_transformer", RESULTS / "text"),
              ("math", "llm", RESULTS / "math"))


def hf_rows() -> list[dict[str, Any]]:
    """Test accuracy of every arm of `dipnet text-classify` / `dipnet math` (pretrained models
    fine-tuned), against standard, plus learned minus frozen at each placement: the tests the
    study's own report (its ``headline``) Holm-corrects together. The command is the study's
    ``command.txt``; the commits are those its per-run files record."""
    rows: list[dict[str, Any]] = []
    for study, arch, folder in HF_STUDIES:
        path = folder / "results.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        s0 = d["settings"]
        runs = sorted(folder.glob("per_run/*.json"))
        commits = sorted({json.loads(f.read_text()).get("commit") or "?" for f in runs})
        command_file = folder / "command.txt"
        command = command_file.read_text().strip() if command_file.is_file() else None
        files = [_rel(path)] + [_rel(f) for f in runs]
        condition = "clean" if not s0.get("train_char_rate") else \
            f"char_noise_{s0['train_char_rate']:g}"
        tests = {(t["a"], t["b"]): t for t in d["headline"]}
        common = {"study": study, "architecture": arch, "pretrained": True,
                  "condition": condition, "metric": "test_accuracy", "replicate": None,
                  "commit": ",".join(commits), "command": command, "files": files}
        for arm, x in d["summary"].items():
            acc = x["acc"]
            t = tests.get((arm, "standard"))
            base, _, placement = arm.partition("@")
            recipe = ({"placement": placement, "init_scale": s0["dip_init_scale"],
                       "parameterization": s0["dip_parameterization"],
                       "variance_lr": s0["dip_variance_lr"],
                       "learn_variance": base == "dipnet"} if placement else {})
            rows.append({**common, "arm": base, "mean": _num(acc["mean"]),
                         "ci_low": _num(acc["ci_low"]), "ci_high": _num(acc["ci_high"]),
                         "n_seeds": int(acc["n"]),
                         "p_vs_standard": None if t is None else _num(t["t_p"]),
                         "diff_vs_standard": None if t is None else _num(t["mean_diff"]),
                         "diff_ci": None if t is None else [_num(t["ci_low"]),
                                                            _num(t["ci_high"])],
                         "recipe": recipe})
        for (a, b), t in tests.items():
            if b == "standard":
                continue
            placement = a.partition("@")[2]
            row = _lmf_row(study, arch, "clean", "test_accuracy", t,
                           {"placement": placement, "init_scale": s0["dip_init_scale"]}, None,
                           common["commit"], command, files)
            rows.append({**row, "pretrained": True, "condition": condition})
    return rows


def build() -> list[dict[str, Any]]:
    """Every row, with Holm-corrected p-values per study."""
    rows = (tuned20_rows() + tune_objective_rows() + dose_rows() + replicate_rows()
            + vit_rows() + hf_rows())
    def raw_p(r: dict[str, Any]) -> float | None:
        return r["p_vs_standard"] if r["arm"] != LMF else r.get("p_learned_vs_frozen")

    for study in {r["study"] for r in rows}:
        mine = [r for r in rows if r["study"] == study and raw_p(r) is not None]
        for r, p in zip(mine, holm([raw_p(r) for r in mine])):
            r["p_holm"] = _num(p)
    for r in rows:
        r.setdefault("p_holm", None)
    return rows


def _pp(r: dict[str, Any] | None, key: str = "diff_vs_standard") -> str:
    if r is None:
        return "-"
    if r["arm"] == LMF:
        d, lo, hi = r["mean"], r["ci_low"], r["ci_high"]
    else:
        if r.get(key) is None:
            return "-"
        d, (lo, hi) = r[key], r["diff_ci"]
    star = "*" if (r["p_holm"] is not None and r["p_holm"] < 0.05) else ""
    ci = "" if lo is None or hi is None else f" [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    return f"{100 * d:+.2f}{ci}{star}"


def _level(r: dict[str, Any]) -> str:
    if r["study"] == "vit_finetune":  # every arm at its defaults, nothing tuned
        return "0.1, untuned"
    if r["study"] in ("text", "math"):  # one untuned level, per placement
        recipe = r["recipe"]
        return (f"{recipe['init_scale']:g}, {recipe['placement']}" if "placement" in recipe
                else "untuned")
    if r.get("tuning_objective"):
        return f"tuned for {r['tuning_objective']}"
    if r["replicate"] is not None and r["study"] == "tune_replicates":
        return f"tuned, replicate {r['replicate']}"
    if "init_scale" in r["recipe"] and "barrier_temperature" not in r["recipe"] and \
            r["study"] == "dose_response":
        return f"{r['recipe']['init_scale']:g}"
    return "tuned"


HEADLINE_METRICS = ("test_accuracy", "pgd_eot_linf_0.05", "corruption_accuracy",
                    "certified_accuracy_l2_0.25")


def table(rows: list[dict[str, Any]]) -> str:
    """study x architecture x condition x metric x level: dipnet and fixed_noise against
    standard, and learned minus frozen at the same level (or after the same tuning)."""
    lines = [TABLE_START, "",
             "| study | architecture | condition | metric | level | dipnet - standard (pp, "
             "95% CI) | fixed_noise - standard | learned - frozen | n seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keep = [r for r in rows if r["metric"] in HEADLINE_METRICS and r["arm"] != "standard"
            and not (r["study"] in ("text", "math") and r["arm"] not in PROJECTED)
            and not (r["study"] == "dose_response" and "barrier_temperature" in r["recipe"])]
    keys: list[tuple[str, str, str, str, str]] = []
    for r in keep:
        k = (r["study"], r["architecture"], r["condition"], r["metric"], _level(r))
        if k not in keys:
            keys.append(k)
    order = {"dose_response": 0, "tune_objective": 1, "tune_replicates": 2,
             "variance_study_tuned20": 3, "vit_finetune": 4, "text": 5, "math": 6}
    keys.sort(key=lambda k: (order.get(k[0], 9), k[1], k[2], HEADLINE_METRICS.index(k[3])))
    for key in keys:
        mine = {r["arm"]: r for r in keep
                if (r["study"], r["architecture"], r["condition"], r["metric"], _level(r)) == key}
        n = max(r["n_seeds"] for r in mine.values())
        lines.append(f"| {' | '.join(key)} | {_pp(mine.get('dipnet'))} | "
                     f"{_pp(mine.get('fixed_noise'))} | {_pp(mine.get(LMF))} | {n} |")
    lines += ["", "`*`: Holm-corrected p < 0.05 within the study (raw and corrected p for every "
              "row, and every other metric, in `summary.json`). Level: the starting "
              "`init_scale` of both arms (dose-response), or each arm tuned with the same "
              "budget.", "", TABLE_END]
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
