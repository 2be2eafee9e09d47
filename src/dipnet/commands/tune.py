"""``dipnet tune``: its options (the command itself is
`dipnet.experiments.tune_cli.tune_command`)."""

from __future__ import annotations

import argparse

from dipnet.commands import grammar
from dipnet.commands.names import METHODS, PERTURBATION_MODES, PERTURBATIONS
from dipnet.commands.train import DATASET_HELP, MODEL_HELP

RUN = "dipnet.experiments.tune_cli:tune_command"
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
