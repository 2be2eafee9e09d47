"""``dipnet compare``, ``dipnet report`` and ``dipnet demo``: their options (the commands
themselves are in `dipnet.experiments.sweep_cli`)."""

from __future__ import annotations

import argparse

from dipnet.commands import grammar
from dipnet.commands.names import (DEMO_METHODS, DEMO_TIME, EVALUATE_SUITES, METHODS, PERTURBATION_MODES,
                    PERTURBATIONS)
from dipnet.commands.train import DATASET_HELP, MODEL_HELP

IMPL = "dipnet.experiments.sweep_cli"
EXTRA = "experiments"
DEFAULT_DEMO_OUT = "runs/demo"


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
