"""``dipnet tune``'s command line: the `TuneConfig` of its options, and the command itself.

`tune_command` is what ``dipnet tune`` runs (`dipnet.commands.tune` names it); the tuning is
`dipnet.experiments.sweep.tune`. (These names were in `tune`, which still forwards them.)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from dipnet import trust
from dipnet.commands.overrides import parse_overrides
from dipnet.errors import UserError
from dipnet.experiments.zoo.data import dataset_label, require_dataset_code_allowed
from dipnet.experiments.sweep.grid import SweepConfig, load_sweep_config
from dipnet.experiments.sweep_cli import _csv_list, _positive_int, apply_backend_options, apply_sweep_overrides
from dipnet.experiments.sweep.tune import TuneConfig, _params_text, tune
from dipnet.experiments.sweep.objective import describe as describe_objective


def _tune_from_args(args: argparse.Namespace) -> TuneConfig:
    """The tune of a command line: --config < flags < --set."""
    if args.config:
        base = load_sweep_config(args.config).to_dict()
        base.pop("tuning", None)
    else:
        missing = [o for o, v in (("--dataset", args.dataset), ("--method", args.method))
                   if not v]
        if missing:
            raise UserError(f"dipnet tune needs {', '.join(missing)} (or --config FILE)")
        base = {"dataset": args.dataset, "model": args.model or "mlp", "methods": [],
                "run": {"num_threads": 1}}
    for opt, key in (("dataset", "dataset"), ("model", "model")):
        if getattr(args, opt):
            base[key] = getattr(args, opt)
    if args.method:
        base["methods"] = _csv_list(args.method)
    if args.train_perturbation:
        base["train_perturbations"] = [args.train_perturbation]
    if args.perturbation_mode:
        base["perturbation_mode"] = args.perturbation_mode
    if args.jobs is not None:
        base["jobs"] = _positive_int("--jobs", args.jobs)
    apply_backend_options(base, args)
    run = base.setdefault("run", {}) or {}
    base["run"] = run
    for opt, key in (("epochs", "epochs"), ("max_train", "max_train"),
                     ("batch_size", "batch_size"), ("threads", "num_threads")):
        if getattr(args, opt) is not None:
            run[key] = _positive_int("--" + opt.replace("_", "-"), getattr(args, opt))
    if args.lr is not None:
        if not args.lr > 0:
            raise UserError(f"--lr must be > 0, got {args.lr}")
        run["lr"] = args.lr
    for opt in ("data_dir", "device"):
        if getattr(args, opt):
            run[opt] = getattr(args, opt)
    search: dict[str, Any] = {}
    pruner: dict[str, Any] = {}
    objective: dict[str, Any] = {}
    if getattr(args, "objective", None):
        objective["kind"] = args.objective
    rest = []
    for ov in parse_overrides(args):
        if ov.head in ("search", "pruner", "objective") and len(ov.rest) == 1:
            {"search": search, "pruner": pruner, "objective": objective}[ov.head][
                ov.rest[0]] = ov.value
        elif ov.head in ("seeds", "evaluate") and not ov.rest:
            raise UserError(f"{ov.describe()}: tune trains every trial with --seed and never "
                            f"evaluates; set {ov.head} on the compare of best.yaml")
        else:
            rest.append(ov)
    base = apply_sweep_overrides(base, rest)
    base["evaluate"] = "none"
    sweep = SweepConfig.from_dict(base)
    if args.config:
        if not args.model:
            trust.require_code_allowed(sweep.model, f"sweep config {args.config}")
        if not args.dataset:
                    require_dataset_code_allowed(sweep.dataset, f"sweep config {args.config}")
    return TuneConfig(sweep=sweep, budget=args.budget, seed=args.seed or 0, search=search,
                      pruner=pruner, objective=objective)


def default_out(cfg: TuneConfig) -> Path:
    """``runs/tune-<dataset>-<model>``."""
    name = f"tune-{dataset_label(cfg.sweep.dataset)}-{cfg.sweep.model}"
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def tune_command(args: argparse.Namespace) -> int:
    """``dipnet tune``: prints the best setting per method and the files written."""
    cfg = _tune_from_args(args)
    out = Path(args.out) if args.out else default_out(cfg)
    result = tune(cfg, out, progress=not args.no_progress)
    print(f"\nTuned with {cfg.budget} trials per method ({describe_objective(cfg.objective)}):\n")
    for method, row in result.best.items():
        print(f"  {method:<12} {row['value']:.4f}  {_params_text(row['params'])}")
    print(f"\nSweep config: {result.best_yaml}  (dipnet compare --config {result.best_yaml})")
    print(f"Trials: {result.trials_csv}; summary: {result.summary_md}; "
          f"{result.wall_clock_s:.0f} s.")
    return 0

