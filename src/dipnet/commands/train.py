"""``dipnet train``: its options (the run itself is `dipnet.experiments.cli.run_train_command`)."""

from __future__ import annotations

import argparse

from dipnet.commands import grammar
from dipnet.commands.names import DATASETS, LR_SCHEDULES, METHODS, MODELS, OPTIMIZERS, PERTURBATION_MODES, \
    PERTURBATIONS

RUN = "dipnet.experiments.cli:run_train_command"
EXTRA = "experiments"

DATASET_HELP = (f"data set: {', '.join(DATASETS)}; or your own: a .npz file (arrays x_train, "
                "y_train, x_test, y_test; optional x_val, y_val, mean, std) or "
                "package.module:factory (see docs/cli.md)")
MODEL_HELP = f"model: {', '.join(MODELS)}, or package.module:factory"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="train one model with one method on one data set",
        description="Train one run and write config.yaml, metrics.json, train.log, checkpoints "
                    "and model.safetensors into --out. Every setting is checked, the data "
                    "loaded and the model built before anything in --out changes; the folder is "
                    "then locked against other dipnet processes. An interrupted run resumes "
                    "from its last checkpoint; a finished one is reused only if its settings "
                    "are the same (otherwise refused, naming the differences) unless "
                    "--overwrite. Flags override the values of --config, and --set overrides "
                    "both. Under `torchrun --nproc_per_node=N -m dipnet train ...` it trains "
                    "data-parallel (DDP).")
    p.add_argument("--config", metavar="FILE", help="YAML run config (e.g. a run's config.yaml); "
                   "flags given on the command line override its values")
    p.add_argument("--dataset", help=DATASET_HELP + " (default digits)")
    p.add_argument("--model", help=MODEL_HELP + " (default mlp)")
    p.add_argument("--method", help=f"training method: {', '.join(METHODS)} (default standard)")
    p.add_argument("--epochs", type=int, help="training epochs (default 10)")
    p.add_argument("--seed", type=int, help="seed of initialisation, batch order and noise "
                   "(default 0)")
    p.add_argument("--out", metavar="DIR", help="results folder (default runs/<run name>, "
                   "e.g. runs/digits-mlp-dipnet-none-s0)")
    p.add_argument("--batch-size", type=int, help="global mini-batch size (default 128)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default adam)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="learning-rate schedule over epochs (default cosine)")
    p.add_argument("--train-perturbation", choices=PERTURBATIONS,
                   help="perturb the training inputs as in the paper's Table 1: none, gaussian "
                        "(sigma 0.2) or fgsm (epsilon 0.2); per batch or once, see "
                        "--perturbation-mode (default none)")
    p.add_argument("--perturbation-strength", type=float, metavar="S",
                   help="sigma / epsilon of --train-perturbation (default the paper's 0.2)")
    p.add_argument("--perturbation-mode", choices=PERTURBATION_MODES,
                   help="fresh: perturb every mini-batch anew (default); fixed: perturb the "
                        "training set once before training (Gaussian seeded by the seed; FGSM "
                        "against a clean standard reference model trained first and cached in "
                        "OUT/../_reference/)")
    p.add_argument("--max-train", type=int, metavar="N",
                   help="use only N training examples (for small CPU budgets)")
    p.add_argument("--val-fraction", type=float, help="fraction of the training split held out "
                   "for validation (default 0.1; not used when the data has its own x_val)")
    p.add_argument("--max-val", type=int, metavar="N", help="evaluate validation on at most N "
                   "held-out examples (default all)")
    p.add_argument("--mc-samples", type=int, metavar="K", help="trajectories averaged by Monte "
                   "Carlo predictions (default 8)")
    p.add_argument("--no-eval-mc", dest="eval_mc", action="store_const", const=False,
                   help="skip the extra Monte Carlo test accuracy of methods that predict "
                        "deterministically (dipnet, dropout); saves mc_samples test passes")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the data set's files "
                   "(default: data/, $DIPNET_DATA and the system locations; see "
                   "docs/experiments.md)")
    grammar.add_set(p, "--set dip.m=2, --set model.hidden=[512,512], --set method.sigma=0.5, "
                       "--set lr=0.01, --set 'normalize={mean: [0.5], std: [0.25]}'")
    grammar.add_old_override(p, "--param", "method.", "a method parameter", "sigma=0.5")
    grammar.add_old_override(p, "--dip", "dip.", "a DIPConfig field of --method dipnet", "m=2")
    grammar.add_old_override(p, "--model-param", "model.", "a model parameter",
                             "'hidden=[512,512]'")
    grammar.add_threads(p)
    grammar.add_device(p)
    grammar.add_report_to(p)
    p.add_argument("--overwrite", action="store_true",
                   help="discard a finished or partial run in --out and train again (only "
                        "once the new run's data and model are ready)")
    p.add_argument("--allow-code", action="store_true",
                   help="allow a --config file to name user code as its model or data set "
                        "(package.module:factory); without it such a file is refused")
    grammar.add_progress(p)
    p.set_defaults(run=RUN, extra=EXTRA)
