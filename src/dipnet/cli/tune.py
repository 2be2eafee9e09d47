"""``dipnet tune``: its options, the `TuneConfig` they make, and the command itself.

The options are defined without heavy imports; the tuning (`dipnet.experiments.sweep.tune`)
is imported when the command runs.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dipnet._util import trust
from dipnet.cli import grammar
from dipnet.cli.names import METHODS, PERTURBATION_MODES, PERTURBATIONS
from dipnet.cli.overrides import parse_overrides
from dipnet.cli.sweep import _csv_list, _positive_int, apply_backend_options, apply_sweep_overrides
from dipnet.cli.train import DATASET_HELP, MODEL_HELP
from dipnet.errors import UserError

if TYPE_CHECKING:  # the tuning imports torch and optuna
    from dipnet.experiments.sweep.tune import TuneConfig

RUN = "dipnet.cli.tune:tune_command"
EXTRA = "tune"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tune`` subcommand."""
    p = subparsers.add_parser(
        "tune", help="tune each method's own hyperparameters on the validation split, the "
                     "same number of trials for every method (Optuna)",
        description="Search the learning rate and each method's own hyperparameters (sigma "
                    "for input_noise / rs, rho for sam, alpha for mixup / cutmix, p for "
                    "dropout, init_scale, variance_lr and barrier_temperature for dipnet, "
                    "init_scale for "
                    "fixed_noise) with Optuna's TPE sampler (seeded) and a median pruner on "
                    "the validation accuracy of every epoch, after a warm-up of half the epochs; "
                    "--budget trials per method; --objective accuracy|robust|mix. "
                    "Trials never touch the test split. Writes OUT/best.yaml (a sweep config "
                    "for dipnet compare --config), OUT/trials.csv and OUT/tune.md. A rerun "
                    "with the same settings resumes. See docs/tune.md.")
    p.add_argument("--method", "--methods", dest="method", metavar="METHODS",
                   help=f"method(s) to tune, comma-separated: {','.join(METHODS)}")
    p.add_argument("--budget", type=grammar.positive_int, required=True, metavar="N",
                   help="trials per method (the same for every method)")
    p.add_argument("--dataset", help=DATASET_HELP)
    p.add_argument("--model", help=MODEL_HELP + " (default mlp)")
    p.add_argument("--config", metavar="FILE",
                   help="a sweep YAML as the base (data set, model, methods, fixed settings); "
                        "options given here override it")
    p.add_argument("--epochs", type=int, help="epochs of every trial (and of best.yaml's runs)")
    p.add_argument("--max-train", type=int, metavar="N", help="use only N training examples")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--lr", type=float, help="fix the learning rate (then it is not searched)")
    p.add_argument("--train-perturbation", choices=PERTURBATIONS,
                   help="the training-input condition to tune for (default none)")
    p.add_argument("--perturbation-mode", choices=PERTURBATION_MODES,
                   help="fresh (default) or fixed, as in dipnet compare")
    p.add_argument("--objective", choices=("accuracy", "robust", "mix"),
                   help="what each trial is selected on, after its last epoch: validation "
                        "accuracy (default), robust validation accuracy under PGD (EOT for "
                        "sampled predictions; --set objective.eps=0.05, objective.norm=linf, "
                        "objective.points=500, objective.steps=10, objective.eot_samples=8), "
                        "or mix: (1 - w) clean + w robust (--set objective.weight=0.5). "
                        "Pruning watches clean validation accuracy either way")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the sampler and every trial's training (default 0)")
    grammar.add_set(p, "--set sam.rho=0.1 (fixed: not searched), --set dip.m=2, --set "
                       "'search.sigma=[0.05, 1.0]' (a search range), --set "
                       "pruner.n_startup_trials=3, --set pruner.kind=none, --set "
                       "backend.slurm_partition=gpu")
    grammar.add_threads(p, "1 per trial")
    grammar.add_device(p)
    p.add_argument("--data-dir", help="folder with the data set's files")
    p.add_argument("--jobs", type=int, help="trials run at once (default 1); batches of --jobs "
                                            "trials, so the same seed picks the same trials")
    grammar.add_backend(p)
    p.add_argument("--out", help="output folder (default runs/tune-<dataset>-<model>)")
    p.add_argument("--allow-code", action="store_true",
                   help="allow a --config file to name user code as its model or data set")
    grammar.add_progress(p, "the line per finished trial")
    p.set_defaults(run=RUN, extra=EXTRA)


def _tune_from_args(args: argparse.Namespace) -> TuneConfig:
    """The tune of a command line: --config < flags < --set."""
    from dipnet.experiments.sweep.grid import SweepConfig, load_sweep_config
    from dipnet.experiments.sweep.tune import TuneConfig
    from dipnet.experiments.zoo.data import require_dataset_code_allowed

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
    from dipnet.experiments.zoo.data import dataset_label

    name = f"tune-{dataset_label(cfg.sweep.dataset)}-{cfg.sweep.model}"
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def tune_command(args: argparse.Namespace) -> int:
    """``dipnet tune``: prints the best setting per method and the files written."""
    from dipnet.experiments.sweep.objective import describe as describe_objective
    from dipnet.experiments.sweep.tune import _params_text, tune

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

