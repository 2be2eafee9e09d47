"""``dipnet compare``, ``dipnet report`` and ``dipnet demo``: their options, and the commands.

The options are defined without heavy imports (``--help`` needs no torch). The logic lives in
`dipnet.experiments.sweep.grid` (the grid, resuming) and `dipnet.experiments.report` (tables,
tests, plots), imported when a command runs; this module parses options and glues them
together. :func:`compare` and :func:`run_demo` are importable for tests and notebooks.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from dipnet._util import trust
from dipnet._util.nested import set_nested
from dipnet.cli import grammar
from dipnet.cli.grammar import parse_seeds
from dipnet.cli.names import (DEMO_METHODS, DEMO_TIME, EVALUATE_SUITES, METHODS, PERTURBATION_MODES,
                              PERTURBATIONS)
from dipnet.cli.overrides import Override, parse_overrides, unknown_scope
from dipnet.cli.train import DATASET_HELP, MODEL_HELP
from dipnet.errors import UserError

if TYPE_CHECKING:  # the harness imports torch, the report scipy and matplotlib
    from dipnet.experiments.report.build import ReportPaths
    from dipnet.experiments.sweep.grid import SweepConfig, SweepResult

__all__ = ["register", "compare", "run_demo", "compare_command", "report_command",
           "demo_command", "apply_sweep_overrides", "DEMO_SWEEP", "DEFAULT_DEMO_OUT"]

IMPL = "dipnet.cli.sweep"
EXTRA = "experiments"
DEFAULT_DEMO_OUT = "runs/demo"


#: The demo: Fashion-MNIST, an MLP, standard training vs DIPNet (learned variances) vs the
#: same projections with the variances frozen (fixed_noise: what learning buys) vs randomized
#: smoothing, with clean training inputs and with the training set perturbed once by Gaussian
#: noise (sigma 0.2; the paper's Table 1 reading, where the variance study found DIPNet's gain),
#: two seeds, on a fixed 8,000-image training subset, then a trimmed quick evaluation (fewer
#: attack / corruption / smoothness points than the quick suite). `names.DEMO_TIME` on 2
#: idle CPU cores (the README's measurement; docs/sweeps.md); configs/demo.yaml is the same
#: sweep as a file (a test keeps them equal). Every method runs at its defaults: nothing is tuned here
#: (the tuned comparison is docs/results/variance_study/).
DEMO_SWEEP: dict[str, Any] = {
    "name": "demo",
    "dataset": "fashion_mnist",
    "model": "mlp",
    "methods": ["standard", "dipnet", "fixed_noise", "rs"],
    "seeds": [0, 1],
    "train_perturbations": ["none", "gaussian"],
    "perturbation_mode": "fixed",
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


def compare(sweep: SweepConfig, out_dir: str | Path, *, progress: bool = True,
            command: Sequence[str] | None = None, report: bool = True,
            title: str | None = None) -> tuple[SweepResult, ReportPaths | None]:
    """Run a sweep (resuming finished runs), evaluate, and build its report.

    Takes the sweep, its output folder, whether to show progress bars, the command to record,
    whether to build the report and its title. Returns (what the sweep did, the report's
    paths or None). The report is built while the sweep folder is still locked. Raises
    UserError for anything the user can fix.
    """
    from dipnet.experiments.sweep.grid import run_sweep

    built: list[ReportPaths] = []

    def _report(result: SweepResult) -> None:
        if report and (result.trained or result.reused):
            from dipnet.experiments.report.build import build_report
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
    from dipnet.experiments.sweep.grid import SweepConfig

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


def _positive_int(name: str, value: Any) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


_SCOPES = ("KEY (a sweep or run field)", "run.KEY", "METHOD.KEY", "method.KEY", "dip.KEY",
           "model.KEY", "eval.KEY", "backend.KEY")


def apply_sweep_overrides(base: dict[str, Any], overrides: Iterable[Override]) -> dict[str, Any]:
    """Apply ``--set`` items to a sweep dict (in place; also returned). See docs/cli.md.

    ``KEY`` is a sweep field (seeds, jobs...) or else a run field of every run; ``run.KEY`` a run
    field; ``METHOD.KEY`` one method's parameter (``sam.rho``); ``method.KEY`` the parameter of
    every listed method that has it; ``dip.KEY`` / ``model.KEY`` / ``eval.KEY`` DIPConfig, model
    and evaluation-suite settings.

    Raises:
        UserError: an unknown key, or ``method.KEY`` that no listed method has.
    """
    from dipnet.experiments.run.config import RunConfig
    from dipnet.experiments.sweep.grid import SweepConfig
    from dipnet.experiments.zoo.methods import get_method, list_methods

    sweep_fields = {f.name for f in dataclasses.fields(SweepConfig)} - {
        "run", "method_params", "evaluation_params"}
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    run = base.setdefault("run", {})
    params = base.setdefault("method_params", {})
    later: list[Override] = []
    for ov in overrides:
        head, rest = ov.head, ov.rest
        if not rest and head in sweep_fields:
            base[head] = ov.value
        elif not rest and head in run_fields:
            run[head] = ov.value
        elif head == "run" and rest:
            if rest[0] not in run_fields:
                raise UserError(f"{ov.describe()}: a run has no field {rest[0]!r}; its fields "
                                f"are {', '.join(sorted(run_fields))}")
            set_nested(run, rest, ov.value)
        elif head == "eval" and rest:
            set_nested(base.setdefault("evaluation_params", {}), rest, ov.value)
        elif head == "backend" and rest:  # docs/cluster.md: backend.slurm_partition=gpu...
            if not isinstance(base.get("backend"), dict):
                base["backend"] = {"name": base["backend"]} if base.get("backend") else {}
            set_nested(base["backend"], rest, ov.value)
        elif rest and head in ("dip", "model", "normalize"):
            key = "model_params" if head == "model" else head
            if not isinstance(run.get(key), dict):
                run[key] = {}
            set_nested(run[key], rest, ov.value)
        elif head == "method" and rest:
            later.append(ov)  # once the sweep's methods are known
        elif rest and head in list_methods():
            set_nested(params.setdefault(head, {}), rest, ov.value)
        else:
            raise unknown_scope(ov, "dipnet compare", _SCOPES)
    methods = base.get("methods") or []
    methods = _csv_list(methods) if isinstance(methods, str) else list(methods)
    for ov in later:
        owners = [m for m in methods if m in list_methods()
                  and ov.rest[0] in get_method(m).defaults]
        if not owners:
            others = [m for m in list_methods() if ov.rest[0] in get_method(m).defaults]
            raise UserError(f"{ov.describe()}: none of the methods {', '.join(methods)} has a "
                            f"parameter {ov.rest[0]!r}" + (f" (it is a parameter of "
                                                           f"{', '.join(others)})" if others
                                                           else ""))
        for m in owners:
            set_nested(params.setdefault(m, {}), ov.rest, ov.value)
    return base


def apply_backend_options(base: dict[str, Any], args: argparse.Namespace) -> None:
    """``--backend`` / ``--address`` into a sweep dict's ``backend`` mapping (in place). A
    backend other than the config file's replaces the file's settings (they were for it)."""
    backend = base.get("backend") or {}
    if isinstance(backend, str):
        backend = {"name": backend}
    name = getattr(args, "backend", None)
    if name and name != (backend.get("name") or "local"):
        backend = {"name": name}
    address = getattr(args, "address", None)
    if address:
        if (backend.get("name") or "local") != "ray":
            raise UserError("--address is for --backend ray (a running Ray cluster): add "
                            "--backend ray, or drop --address")
        backend["address"] = address
    base["backend"] = backend


def _sweep_from_args(args: argparse.Namespace) -> SweepConfig:
    """The sweep of a ``compare`` command line: --config < flags < --set."""
    from dipnet.experiments.sweep.grid import SweepConfig, load_sweep_config
    from dipnet.experiments.zoo.data import require_dataset_code_allowed

    if args.config:
        base = load_sweep_config(args.config).to_dict()
    else:
        missing = [o for o, v in (("--dataset", args.dataset), ("--methods", args.methods))
                   if not v]
        if missing:
            raise UserError(f"dipnet compare needs {', '.join(missing)} (or --config FILE)")
        base = {"dataset": args.dataset, "model": args.model or "mlp", "methods": [],
                "run": {"num_threads": 1}}
    if args.dataset:
        base["dataset"] = args.dataset
    if args.model:
        base["model"] = args.model
    if args.methods:
        base["methods"] = _csv_list(args.methods)
    if args.seeds is not None:
        base["seeds"] = parse_seeds(args.seeds)
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
    apply_backend_options(base, args)
    run = base.setdefault("run", {}) or {}
    base["run"] = run
    for opt, key in (("epochs", "epochs"), ("max_train", "max_train"),
                     ("batch_size", "batch_size"), ("threads", "num_threads")):
        val = getattr(args, opt)
        if val is not None:
            run[key] = _positive_int("--" + opt.replace("_", "-"), val)
    if args.lr is not None:
        if not args.lr > 0:
            raise UserError(f"--lr must be > 0, got {args.lr}")
        run["lr"] = args.lr
    for opt in ("data_dir", "device", "report_to"):
        if getattr(args, opt):
            run[opt] = getattr(args, opt)
    sweep = SweepConfig.from_dict(apply_sweep_overrides(base, parse_overrides(args)))
    if args.config:
        # code named only by a file is not the user's say (a flag or --allow-code is)
        if not args.model:
            trust.require_code_allowed(sweep.model, f"sweep config {args.config}")
        if not args.dataset:
            require_dataset_code_allowed(sweep.dataset, f"sweep config {args.config}")
    return sweep


def default_out(sweep: SweepConfig) -> Path:
    """``runs/<name>``, or ``runs/compare-<dataset>-<model>`` for a sweep without a name."""
    from dipnet.experiments.zoo.data import dataset_label

    name = sweep.name or f"compare-{dataset_label(sweep.dataset)}-{sweep.model}"
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _print_tables(res: dict[str, Any]) -> None:
    """The clean-accuracy table, then the scorecard (robustness included), per data set."""
    from dipnet.experiments.report import scorecard
    from dipnet.experiments.report.tables import summary_table

    for ds, model in sorted({(a["dataset"], a["model"]) for a in res["aggregates"]}):
        print(f"\nClean test accuracy (%), {ds} / {model}, mean ± std over seeds:\n")
        print(summary_table(res, ds, model))
    for card in res.get("scorecards") or []:
        print(f"\nScorecard, {card['dataset']} / {card['model']}: each method against "
              "standard training\n")
        print(scorecard.markdown(card))


def _print_summary(paths: "ReportPaths | None", result: SweepResult) -> None:
    if paths is None:
        print("dipnet: no finished run to report on", file=sys.stderr)
        return
    _print_tables(paths.results)
    print(f"\n{len(result.trained)} run(s) trained, {len(result.reused)} reused, "
          f"{len(result.failed)} failed; {result.wall_clock_s:.0f} s.")
    if result.evaluation_skipped:
        print(f"Evaluation: {result.evaluation_skipped}.")
    if not any(r.get("evaluated") for r in paths.results["runs"]):
        print("Robustness was not measured: these runs were not evaluated (compare's default "
              "is --evaluate none). Add --evaluate quick to the same command to measure it; the "
              "trained runs are reused.")
    print(f"Report: {paths.markdown} and {paths.html} (one self-contained page); "
          f"results: {paths.results_json}, {paths.results_csv}")


def compare_command(args: argparse.Namespace) -> int:
    """``dipnet compare``: exit 0 when every run finished, 1 when some failed."""
    sweep = _sweep_from_args(args)
    out = Path(args.out) if args.out else default_out(sweep)
    result, paths = compare(sweep, out, progress=not args.no_progress,
                            report=not args.no_report)
    if not args.no_report:
        _print_summary(paths, result)
    return 1 if result.failed else 0


def report_command(args: argparse.Namespace) -> int:
    """``dipnet report DIR``: rebuild a sweep's report; prints its summary tables."""
    from dipnet.experiments.report.build import build_report

    paths = build_report(args.sweep_dir, out_dir=args.out, title=args.title)
    _print_tables(paths.results)
    print(f"\nReport: {paths.markdown} and {paths.html}; results: {paths.results_json}, "
          f"{paths.results_csv}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """``dipnet demo``: the built-in comparison (:data:`DEMO_SWEEP`)."""
    if args.jobs is not None:
        _positive_int("--jobs", args.jobs)
    t0 = time.perf_counter()
    result, paths = run_demo(args.out, progress=not args.no_progress, jobs=args.jobs,
                             evaluate=args.evaluate)
    _print_summary(paths, result)
    print(f"Demo finished in {time.perf_counter() - t0:.0f} s.")
    return 1 if result.failed else 0


def _add_compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help=DATASET_HELP)
    p.add_argument("--model", help=MODEL_HELP + " (default mlp)")
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
    grammar.add_threads(p, "1 per run process; keep jobs x threads <= cores", old_name=True)
    grammar.add_device(p)
    p.add_argument("--data-dir", help="folder with the data set's files (default: the "
                                      "places scripts/setup.sh installs to)")
    p.add_argument("--evaluate", choices=EVALUATE_SUITES,
                   help="evaluation suite run on every run after training (attacks, "
                        "corruptions, calibration, smoothness); default none")
    p.add_argument("--config", metavar="FILE",
                   help="sweep YAML file (see configs/); options given here override it")
    grammar.add_set(p, "--set dip.m=2, --set model.hidden=[512,512], --set sam.rho=0.1 (one "
                       "method), --set method.sigma=0.5 (every listed method that has sigma), "
                       "--set weight_decay=5e-4 (every run), --set eval.attack_points=200")
    grammar.add_old_override(p, "--param", "", "SCOPE.KEY=VALUE overrides", "sam.rho=0.1")
    grammar.add_report_to(p)
    p.add_argument("--jobs", type=int, help="runs trained in parallel processes (default 1)")
    grammar.add_backend(p)
    p.add_argument("--name", help="sweep label used in the report title")
    p.add_argument("--allow-code", action="store_true",
                   help="allow a --config file to name user code as its model or data set "
                        "(package.module:factory); without it such a file is refused")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the compare, report and demo subcommands."""
    p = subparsers.add_parser(
        "compare", help="train a grid of methods x seeds x training-input conditions, then "
                        "report",
        description="Run every (method, seed, training-input condition) into OUT/runs/, "
                    "reusing runs that already finished (an interrupted sweep resumes), "
                    "evaluate them if asked, and write OUT/report.md, OUT/report.html, "
                    "OUT/results.json and OUT/results.csv. Every setting, data set and model "
                    "is checked, and every existing run compared, before anything in OUT "
                    "changes; OUT is then locked against other dipnet processes.")
    _add_compare_options(p)
    p.add_argument("--out", help="output folder of the sweep (created; default "
                                 "runs/compare-<dataset>-<model>, or runs/<--name>)")
    p.add_argument("--no-report", action="store_true", help="train only; build the report "
                                                            "later with dipnet report OUT")
    grammar.add_progress(p)
    p.set_defaults(run=f"{IMPL}:compare_command", extra=EXTRA)

    r = subparsers.add_parser(
        "report", help="rebuild a sweep's report from its runs on disk",
        description="Read OUT/runs/*/ (metrics.json, config.yaml, evaluation.json) and write "
                    "report.md, report.html, results.json, results.csv and figures/.")
    r.add_argument("sweep_dir", metavar="DIR", help="the --out folder of a dipnet compare")
    r.add_argument("--out", help="write the report here instead of DIR")
    r.add_argument("--title", help="report title")
    r.set_defaults(run=f"{IMPL}:report_command", extra=EXTRA)

    d = subparsers.add_parser(
        "demo", help=f"the main job: a real comparison of DIPNet against baselines "
                     f"({DEMO_TIME})",
        description=f"Fashion-MNIST, an MLP, methods: {', '.join(DEMO_METHODS)}. That is "
                    "standard training, DIPNet (learned variances), the same projections with "
                    "frozen variances and randomized smoothing, each at its defaults (nothing "
                    "tuned), trained on clean and on Gaussian-perturbed inputs, 2 seeds; then a "
                    "quick evaluation (attacks with EOT for sampled predictions, corruptions, "
                    "OOD detection, calibration, smoothness). Prints the accuracy table and the "
                    "scorecard (robustness included) and writes the report (OUT/report.md, "
                    f"OUT/report.html). {DEMO_TIME[0].upper() + DEMO_TIME[1:]}. Run again to "
                    "reuse the finished runs.")
    d.add_argument("--out", default=DEFAULT_DEMO_OUT,
                   help=f"output folder (default {DEFAULT_DEMO_OUT})")
    d.add_argument("--jobs", type=int, help="runs in parallel (default 2, one per core)")
    d.add_argument("--evaluate", choices=EVALUATE_SUITES,
                   help="evaluation suite (default quick; none skips it)")
    grammar.add_progress(d)
    d.set_defaults(run=f"{IMPL}:demo_command", extra=EXTRA)
