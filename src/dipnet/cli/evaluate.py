"""``dipnet evaluate RUN_DIR``: its options, and the command that runs the evaluation suite on
trained runs and prints a summary. The parser imports only the suite's settings
(`dipnet.evaluation.settings`: no torch); tests/cli/test_cli_startup.py keeps it so."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

from dipnet.cli.grammar import positive_int
from dipnet.errors import UserError
from dipnet._util.threads import limit_openmp_spinning
from dipnet.evaluation.settings import ATTACK_NAMES, PARTS, SUITES

RUN = "dipnet.cli.evaluate:run_evaluate_command"
EXTRA = "eval"


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not math.isfinite(v) or v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0, got {text!r}")
    return vals


def _names(allowed: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        vals = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in vals if v not in allowed]
        if not vals or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(allowed)}, got {text!r}")
        return vals
    return parse


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    q, f = SUITES["quick"], SUITES["full"]
    p = subparsers.add_parser(
        "evaluate",
        help="attacks, corruptions, OOD, calibration and smoothness of trained runs",
        description="Evaluate trained runs (folders written by `dipnet train`): clean accuracy, "
                    "FGSM / PGD (L-inf, L2; EOT for sampled predictions; APGD-CE, APGD-DLR "
                    "and Square from ART in the full suite), common corruptions, "
                    "out-of-distribution detection, calibration and the smoothness measures of "
                    "the DIPNet theory, for the deterministic and the sampled prediction. Writes "
                    "evaluation.json into each run folder (or --out) and prints a summary.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) to evaluate")
    p.add_argument("--suite", choices=sorted(SUITES), default="quick",
                   help=f"quick (about a minute for an MLP on MNIST on 2 cores: {q.attack_points} "
                        f"attack points, {q.pgd_steps} PGD steps) or full ({f.attack_points} points, "
                        f"{f.pgd_steps} steps, {f.restarts} restarts, CE+margin losses, more "
                        "epsilons, corruptions and severities) (default quick)")
    p.add_argument("--k", type=positive_int, default=None,
                   help="trajectories averaged by the sampled prediction (default: the run's "
                        "--mc-samples)")
    p.add_argument("--eps", type=_floats, default=None, metavar="E1,E2,...",
                   help=f"L-inf epsilons on [0, 1] inputs (default {','.join(map(str, q.linf_eps))}"
                        " for quick)")
    p.add_argument("--l2-eps", type=_floats, default=None, metavar="E1,E2,...",
                   help=f"L2 epsilons (default {','.join(map(str, q.l2_eps))} for quick)")
    p.add_argument("--attacks", type=_names(ATTACK_NAMES), default=None, metavar="A,B",
                   help="attacks to run: fgsm, pgd and the AutoAttack-style apgd-ce, apgd-dlr, "
                        "square (from ART, on --set strong_points points at --set "
                        "strong_linf_eps / strong_l2_eps) (default fgsm,pgd for quick, all for "
                        "full)")
    p.add_argument("--parts", type=_names(PARTS), default=None, metavar="P,Q",
                   help=f"parts of the suite to run: {', '.join(PARTS)} (default all)")
    p.add_argument("--attack-points", type=positive_int, default=None, metavar="N",
                   help="test points attacked (a fixed random subset)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N", help="PGD steps")
    p.add_argument("--eot-samples", type=positive_int, default=None, metavar="N",
                   help="trajectories per EOT gradient step for sampled predictions "
                        "(default 8 for quick, k for full)")
    p.add_argument("--severities", type=_ints, default=None, metavar="S1,S2",
                   help="corruption severities 1..5 (default 1,2 for quick, 1,2,3 for full)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", dest="settings",
                   help="any other suite setting (repeatable), e.g. --set clean_points=2000 "
                        "--set pgd_losses=[ce,margin] --set eval.restarts=3 (YAML values; "
                        "KEY or eval.KEY as in compare; names in docs/evaluation.md and "
                        "dipnet.evaluation.settings.SuiteSettings; grammar in docs/cli.md)")
    p.add_argument("--shift-set", action="append", default=None, metavar="NAME_OR_PATH",
                   help="an extra test distribution, repeatable: a data set name or a .npz "
                        "(x_test, y_test; or x, y) with the run's input shape and classes; "
                        "accuracy, NLL and ECE per prediction under 'shift' in evaluation.json, "
                        "labelled with the set's name (the file stem)")
    p.add_argument("--ood-set", action="append", default=None, metavar="NAME_OR_PATH",
                   help="an extra out-of-distribution partner, repeatable: a data set name or "
                        "a .npz (x_test or x; labels ignored), beside the run's default "
                        "partners, labelled with its name (the file stem)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the JSON here instead of RUN_DIR/evaluation.json (one run only)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the data sets' files (default: the run's own)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda if available, else cpu), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads (default torch's choice; waiting threads spin "
                        "briefly, then sleep: GOMP_SPINCOUNT=3000 unless GOMP_SPINCOUNT or "
                        "OMP_WAIT_POLICY is set)")
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="hide the progress bars (--quiet is the same)")
    p.set_defaults(run=RUN, extra=EXTRA)


def _fmt(v: Any, scale: float = 100.0, digits: int = 1) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v * scale:.{digits}f}"


def summary_rows(ev: dict[str, Any]) -> list[list[str]]:
    """Rows (measure, one value per prediction) summarising one evaluation dict."""
    preds = ev.get("predictions") or list(ev.get("clean", {}))
    rows: list[list[str]] = []

    def row(name: str, fn, scale: float = 100.0, digits: int = 1) -> None:
        vals = []
        for p in preds:
            try:
                vals.append(_fmt(fn(p), scale, digits))
            except (KeyError, StopIteration, TypeError):
                vals.append("-")
        rows.append([name, *vals])

    row("clean accuracy %", lambda p: ev["clean"][p]["accuracy"])
    for a in ev.get("attacks") or []:
        if a["eps"] > 0 and a["prediction"] == preds[0]:
            key = (a["attack"], a["norm"], a["eps"])
            row(f"{a['attack'].upper()} {a['norm']} eps {a['eps']:g} %",
                lambda p, key=key: next(b["accuracy"] for b in ev["attacks"] if b["prediction"] == p
                                        and (b["attack"], b["norm"], b["eps"]) == key))
    for s in ev.get("shift") or []:  # --shift-set
        if s["prediction"] == preds[0]:
            row(f"shift set {s['set']} accuracy %", lambda p, n=s["set"]: next(
                b["accuracy"] for b in ev["shift"] if b["prediction"] == p and b["set"] == n))
    row("corruptions (mean) %", lambda p: next(c["accuracy"] for c in ev["corruptions"]
                                               if c["prediction"] == p and c["corruption"] == "mean"))
    for o in ev.get("ood") or []:
        if o["prediction"] == preds[0]:
            key = (o["out_dataset"], o["score"])
            row(f"OOD AUROC vs {o['out_dataset']} ({o['score']})",
                lambda p, key=key: next(b["auroc"] for b in ev["ood"] if b["prediction"] == p
                                        and (b["out_dataset"], b["score"]) == key), 1.0, 3)
    row("ECE %", lambda p: ev["calibration"][p]["ece"])
    row("NLL", lambda p: ev["calibration"][p]["nll"], 1.0, 3)
    for key, label in (("loss_grad_norm", "loss input-gradient norm"),
                       ("lipschitz_adversarial", "local Lipschitz (adversarial)"),
                       ("input_hessian_spectral", "input-Hessian spectral norm")):
        row(f"{label} (mean)", lambda p, key=key: ev["smoothness"][p][key]["mean"], 1.0, 3)
    row("weight-Hessian top eigenvalue", lambda p: ev["smoothness"][p]["weight_hessian_top_eigenvalue"], 1.0, 2)
    row("output variance (mean)", lambda p: ev["smoothness"][p]["output_variance"]["mean"], 1.0, 3)
    return rows


def format_summary(ev: dict[str, Any]) -> str:
    """A plain-text summary table of one evaluation dict, plus its timing line."""
    preds = ev.get("predictions") or list(ev.get("clean", {}))
    header = ["measure", *preds]
    rows = summary_rows(ev)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    t = ev.get("timing") or {}
    lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()
                                          if isinstance(v, (int, float))))
    return "\n".join(lines)


def parse_settings(items: Sequence[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, values parsed as YAML; lists become tuples.

    Raises:
        UserError: an item without ``=``, or a value that is not valid YAML.
    """
    # the command line's one --set grammar (docs/cli.md): KEY or eval.KEY
    from dipnet.cli.overrides import parse_item, suite_settings

    return suite_settings([parse_item("--set", item) for item in items or []], "dipnet evaluate")


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Evaluate each RUN_DIR; print a summary per run; returns 0."""
    limit_openmp_spinning()
    import torch

    from dipnet.experiments.assess.evaluate import evaluate_run

    if args.out is not None and len(args.run_dirs) > 1:
        raise UserError("--out names one file but several run folders were given; drop --out "
                        "(each run gets RUN_DIR/evaluation.json).")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"linf_eps": args.eps, "l2_eps": args.l2_eps, "attacks": args.attacks,
                 "parts": args.parts, "attack_points": args.attack_points,
                 "pgd_steps": args.steps, "eot_samples": args.eot_samples,
                 "severities": args.severities}
    overrides.update(parse_settings(args.settings))
    for run_dir in args.run_dirs:
        ev = evaluate_run(run_dir, args.suite, k=args.k, device=args.device,
                          data_dir=args.data_dir, progress=not args.no_progress, out=args.out,
                          shift_sets=args.shift_set or (), ood_sets=args.ood_set or (),
                          **overrides)
        target = Path(args.out) if args.out else Path(run_dir) / "evaluation.json"
        print(f"\n{ev['dataset']} / {ev['model']} / {ev['method']} (seed {ev['seed']}), "
              f"suite {ev['suite']}, k={ev['k']}: {target}")
        print(format_summary(ev))
        for note in ev.get("notes") or []:
            print(f"note: {note}")
    return 0
