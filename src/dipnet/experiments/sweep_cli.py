"""`dipnet compare`, `dipnet report` and `dipnet demo`: sweeps and their report.

The logic lives in :mod:`dipnet.experiments.sweep` (the grid, resuming) and
:mod:`dipnet.experiments.report` (tables, tests, plots); this module parses options and glues
them together. :func:`compare` and :func:`run_demo` are importable for tests and notebooks.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .. import trust
from ..errors import UserError
from .sweep import (EVALUATE_SUITES, METHODS, PERTURBATION_MODES, PERTURBATIONS, SweepConfig,
                    SweepResult, apply_params, load_sweep_config, run_sweep)

if TYPE_CHECKING:  # the report pulls in scipy and matplotlib: imported when it is built
    from .report import ReportPaths

__all__ = ["register", "compare", "run_demo", "DEMO_SWEEP", "DEFAULT_DEMO_OUT"]

#: The demo: Fashion-MNIST, an MLP, standard vs DIPNet vs three baselines (SAM, randomized
#: smoothing, input-only Gaussian noise), two seeds, on a fixed 8,000-image training subset,
#: then a trimmed quick evaluation (fewer attack / corruption / smoothness points than the
#: quick suite). Sized by measurement to finish in about five minutes on 2 CPU cores (timings
#: in docs/sweeps.md); configs/demo.yaml is the same sweep as a file (a test keeps them equal).
DEMO_SWEEP: dict[str, Any] = {
    "name": "demo",
    "dataset": "fashion_mnist",
    "model": "mlp",
    "methods": ["standard", "dipnet", "sam", "rs", "input_noise"],
    "seeds": [0, 1],
    "train_perturbations": ["none"],
    "evaluate": "quick",
    "jobs": 2,
    "run": {"epochs": 4, "max_train": 8000, "batch_size": 128, "mc_samples": 8,
            "num_threads": 1, "model_params": {"hidden": [256, 256]}},
    "method_params": {},
    "evaluation_params": {"attack_points": 200, "linf_eps": [0.0, 0.05, 0.1, 0.2],
                          "l2_eps": [0.0, 1.0, 2.0], "pgd_steps": 10,
                          "corruption_points": 150, "ood_points": 1000,
                          "smoothness_points": 50},
}
DEFAULT_DEMO_OUT = "runs/demo"


def compare(sweep: SweepConfig, out_dir: str | Path, *, progress: bool = True,
            command: Sequence[str] | None = None, report: bool = True,
            title: str | None = None) -> tuple[SweepResult, ReportPaths | None]:
    """Run a sweep (resuming finished runs), evaluate, and build its report.

    Takes the sweep, its output folder, whether to show progress bars, the command to record,
    whether to build the report and its title. Returns (what the sweep did, the report's
    paths or None). The report is built while the sweep folder is still locked. Raises
    UserError for anything the user can fix.
    """
    built: list[ReportPaths] = []

    def _report(result: SweepResult) -> None:
        if report and (result.trained or result.reused):
            from .report import build_report
            built.append(build_report(out_dir, title=title or (
                f"DIPNet comparison: {sweep.name}" if sweep.name else None)))

    result = run_sweep(sweep, out_dir, progress=progress, command=command, after=_report)
    return result, (built[0] if built else None)


def run_demo(out_dir: str | Path = DEFAULT_DEMO_OUT, sweep: dict[str, Any] | None = None, *,
             progress: bool = True, jobs: int | None = None,
             evaluate: str | None = None) -> tuple[SweepResult, ReportPaths | None]:
    """The demo comparison (:data:`DEMO_SWEEP`, or ``sweep`` for a smaller one in tests).

    Takes the output folder, an optional sweep dict replacing the demo's, and optional
    overrides of its parallel jobs and evaluation suite. Returns what :func:`compare` returns.
    """
    data = copy.deepcopy(sweep if sweep is not None else DEMO_SWEEP)
    if jobs is not None:
        data["jobs"] = jobs
    if evaluate is not None:
        data["evaluate"] = evaluate
    cfg = SweepConfig.from_dict(data)
    return compare(cfg, out_dir, progress=progress,
                   command=["dipnet", "demo", "--out", str(out_dir)],
                   title="DIPNet demo: Fashion-MNIST MLP" if sweep is None else None)


# --- option parsing --------------------------------------------------------------------------
def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2]; '0,5,7' -> [0, 5, 7]."""
    try:
        parts = [int(t) for t in _csv_list(text)]
    except ValueError:
        raise UserError(f"--seeds {text!r} is not a count or a comma list of integers: write "
                        f"e.g. --seeds 3 or --seeds 0,1,2") from None
    if len(parts) == 1 and "," not in str(text):
        if parts[0] < 1:
            raise UserError(f"--seeds must be at least 1, got {parts[0]}")
        return list(range(parts[0]))
    if any(p < 0 for p in parts):
        raise UserError(f"--seeds {text!r} has a negative seed: seeds are integers >= 0")
    return parts


def _positive_int(name: str, value: Any) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def _sweep_from_args(args: argparse.Namespace) -> SweepConfig:
    if args.config:
        base = load_sweep_config(args.config).to_dict()
    else:
        missing = [o for o, v in (("--dataset", args.dataset), ("--model", args.model),
                                  ("--methods", args.methods)) if not v]
        if missing:
            raise UserError(f"dipnet compare needs {', '.join(missing)} (or --config FILE)")
        base = {"dataset": args.dataset, "model": args.model, "methods": [],
                "run": {"num_threads": 1}}
    if args.dataset:
        base["dataset"] = args.dataset
    if args.model:
        base["model"] = args.model
    if args.methods:
        base["methods"] = _csv_list(args.methods)
    if args.seeds is not None:
        base["seeds"] = _parse_seeds(args.seeds)
    if args.train_perturbations:
        base["train_perturbations"] = _csv_list(args.train_perturbations)
    if args.perturbation_mode:
        base["perturbation_mode"] = args.perturbation_mode
    if args.evaluate:
        base["evaluate"] = args.evaluate
    if args.jobs is not None:
        base["jobs"] = _positive_int("--jobs", args.jobs)
    if args.name:
        base["name"] = args.name
    run = base.setdefault("run", {}) or {}
    base["run"] = run
    for opt, key in (("epochs", "epochs"), ("max_train", "max_train"),
                     ("batch_size", "batch_size"), ("num_threads", "num_threads")):
        val = getattr(args, opt)
        if val is not None:
            run[key] = _positive_int("--" + opt.replace("_", "-"), val)
    if args.lr is not None:
        if not args.lr > 0:
            raise UserError(f"--lr must be > 0, got {args.lr}")
        run["lr"] = args.lr
    if args.data_dir:
        run["data_dir"] = args.data_dir
    sweep = apply_params(SweepConfig.from_dict(base), args.param or [])
    if args.config and not args.model:
        # a model named only by a file is not the user's say (--model or --allow-code is)
        trust.require_code_allowed(sweep.model, f"sweep config {args.config}")
    return sweep


def _print_summary(paths: "ReportPaths | None", result: SweepResult) -> None:
    from .report import summary_table

    if paths is None:
        print("dipnet: no finished run to report on", file=sys.stderr)
        return
    res = paths.results
    pairs = sorted({(a["dataset"], a["model"]) for a in res["aggregates"]})
    for ds, model in pairs:
        print(f"\nClean test accuracy (%), {ds} / {model}, mean ± std over seeds:\n")
        print(summary_table(res, ds, model))
    print(f"\n{len(result.trained)} run(s) trained, {len(result.reused)} reused, "
          f"{len(result.failed)} failed; {result.wall_clock_s:.0f} s.")
    if result.evaluation_skipped:
        print(f"Evaluation: {result.evaluation_skipped}.")
    print(f"Report: {paths.markdown} and {paths.html} (one self-contained page); "
          f"results: {paths.results_json}, {paths.results_csv}")


def _cmd_compare(args: argparse.Namespace) -> int:
    sweep = _sweep_from_args(args)
    result, paths = compare(sweep, args.out, progress=not args.quiet,
                            report=not args.no_report)
    if not args.no_report:
        _print_summary(paths, result)
    return 1 if result.failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report, summary_table

    paths = build_report(args.sweep_dir, out_dir=args.out, title=args.title)
    res = paths.results
    for ds, model in sorted({(a["dataset"], a["model"]) for a in res["aggregates"]}):
        print(f"\nClean test accuracy (%), {ds} / {model}, mean ± std over seeds:\n")
        print(summary_table(res, ds, model))
    print(f"\nReport: {paths.markdown} and {paths.html}; results: {paths.results_json}, "
          f"{paths.results_csv}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.jobs is not None:
        _positive_int("--jobs", args.jobs)
    t0 = time.perf_counter()
    result, paths = run_demo(args.out, progress=not args.quiet, jobs=args.jobs,
                             evaluate=args.evaluate)
    _print_summary(paths, result)
    print(f"Demo finished in {time.perf_counter() - t0:.0f} s.")
    return 1 if result.failed else 0


def _add_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="data set name (e.g. digits, mnist, fashion_mnist, mnist1d)")
    p.add_argument("--model", help="model name (e.g. mlp, resnet8, vit) or package.module:factory")
    p.add_argument("--methods", help=f"comma-separated methods to compare; any of "
                                     f"{','.join(METHODS)}. Include standard: every paired "
                                     f"test is against it")
    p.add_argument("--seeds", help="number of seeds (3 -> 0,1,2) or a comma list (0,5,7); "
                                   "default 3")
    p.add_argument("--train-perturbations", metavar="LIST",
                   help=f"comma-separated training-input conditions of the paper's Table 1: "
                        f"{','.join(PERTURBATIONS)} (default none)")
    p.add_argument("--perturbation-mode", choices=PERTURBATION_MODES,
                   help="fresh: perturb every mini-batch anew (default); fixed: perturb each "
                        "training set once (FGSM against a clean standard reference model "
                        "trained first and shared by every method, in OUT/runs/_reference/)")
    p.add_argument("--epochs", type=int, help="training epochs of every run")
    p.add_argument("--max-train", type=int, help="use only this many training examples "
                                                  "(a fixed subset; for CPU budgets)")
    p.add_argument("--batch-size", type=int, help="training batch size of every run")
    p.add_argument("--lr", type=float, help="learning rate of every run")
    p.add_argument("--num-threads", type=int, help="torch threads per run process "
                                                   "(default 1; jobs x threads <= cores)")
    p.add_argument("--data-dir", help="folder with the data set's files (default: the "
                                      "places scripts/setup.sh installs to)")
    p.add_argument("--evaluate", choices=EVALUATE_SUITES,
                   help="evaluation suite run on every run after training (attacks, "
                        "corruptions, calibration, smoothness); default none")
    p.add_argument("--config", metavar="FILE",
                   help="sweep YAML file (see configs/); options given here override it")
    p.add_argument("--param", action="append", metavar="SCOPE.KEY=VALUE",
                   help="override a parameter, repeatable: METHOD.key=value for one method "
                        "(sam.rho=0.1), dip.key=value (dip.gamma=0.05), model.key=value "
                        "(model.hidden=[512,512]), run.key=value (run.weight_decay=5e-4), "
                        "eval.key=value (evaluation sizes: eval.attack_points=200)")
    p.add_argument("--jobs", type=int, help="runs trained in parallel processes (default 1)")
    p.add_argument("--name", help="sweep label used in the report title")
    p.add_argument("--allow-code", action="store_true",
                   help="allow a --config file to name user code as its model "
                        "(package.module:factory); without it such a file is refused")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the compare, report and demo subcommands to the dipnet CLI."""
    p = subparsers.add_parser(
        "compare", help="train a grid of methods x seeds x training-input conditions, then "
                        "report",
        description="Run every (method, seed, training-input condition) into OUT/runs/, "
                    "reusing runs that already finished (an interrupted sweep resumes), "
                    "evaluate them if asked, and write OUT/report.md, OUT/report.html, "
                    "OUT/results.json and OUT/results.csv. Every setting, data set and model "
                    "is checked, and every existing run compared, before anything in OUT "
                    "changes; OUT is then locked against other dipnet processes.")
    _add_sweep_options(p)
    p.add_argument("--out", required=True, help="output folder of the sweep (created)")
    p.add_argument("--no-report", action="store_true", help="train only; build the report "
                                                            "later with dipnet report OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_compare)

    r = subparsers.add_parser(
        "report", help="rebuild a sweep's report from its runs on disk",
        description="Read OUT/runs/*/ (metrics.json, config.yaml, evaluation.json) and write "
                    "report.md, report.html, results.json, results.csv and figures/.")
    r.add_argument("sweep_dir", metavar="DIR", help="the --out folder of a dipnet compare")
    r.add_argument("--out", help="write the report here instead of DIR")
    r.add_argument("--title", help="report title")
    r.set_defaults(func=_cmd_report)

    d = subparsers.add_parser(
        "demo", help="the main job: a real comparison of DIPNet against baselines "
                     "(about 5 minutes on 2 cores)",
        description="Fashion-MNIST, an MLP: standard vs DIPNet vs SAM, randomized smoothing "
                    "and input-only Gaussian noise, 2 seeds, then a quick evaluation (attacks "
                    "with EOT for sampled predictions, corruptions, OOD detection, calibration, "
                    "smoothness). Prints a summary table and writes the report (OUT/report.md, "
                    "OUT/report.html). Run again to reuse the finished runs.")
    d.add_argument("--out", default=DEFAULT_DEMO_OUT,
                   help=f"output folder (default {DEFAULT_DEMO_OUT})")
    d.add_argument("--jobs", type=int, help="runs in parallel (default 2, one per core)")
    d.add_argument("--evaluate", choices=EVALUATE_SUITES,
                   help="evaluation suite (default quick; none skips it)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)
