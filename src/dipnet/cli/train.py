"""`dipnet train`: one training run from flags, ``--set`` overrides and/or a YAML config.

The options are defined without heavy imports (``dipnet train --help`` needs no torch); the
harness is imported when the command runs. Precedence: ``--config`` file < flags < ``--set``
items. What the ``--set`` keys of ``train`` mean (docs/cli.md):

    KEY=V            a run field (``lr``, ``epochs``, ``normalize``, ``report_to``...)
    run.KEY=V        the same, spelled with its scope
    method.KEY=V     a parameter of the run's method (``method.sigma=0.5``)
    METHOD.KEY=V     the same, naming the method; an error if it is not the run's method
    dip.KEY=V        a DIPConfig field (methods built on DIPConfig only)
    model.KEY=V      a keyword argument of the model factory (``model.hidden=[512,512]``)

Settings that do not apply to the run (``dip.*`` with ``--method standard``, a method
parameter the method lacks, a model parameter the model lacks) are errors, raised by the run's
plan before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from dipnet._util import trust
from dipnet._util.nested import set_nested
from dipnet.cli import grammar
from dipnet.cli.names import (DATASETS, LR_SCHEDULES, METHODS, MODELS, OPTIMIZERS,
                              PERTURBATION_MODES, PERTURBATIONS)
from dipnet.cli.overrides import Override, parse_overrides, unknown_scope
from dipnet.errors import UserError

if TYPE_CHECKING:  # the harness imports torch: loaded when the command runs
    from dipnet.experiments.run.config import RunConfig

RUN = "dipnet.cli.train:run_train_command"
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


# CLI flag -> RunConfig field, for the plain ones.
_FLAG_FIELDS = {
    "dataset": "dataset", "model": "model", "method": "method", "epochs": "epochs",
    "seed": "seed", "batch_size": "batch_size", "lr": "lr", "optimizer": "optimizer",
    "weight_decay": "weight_decay", "lr_schedule": "lr_schedule",
    "train_perturbation": "train_perturbation", "perturbation_strength":
    "perturbation_strength", "perturbation_mode": "perturbation_mode",
    "max_train": "max_train", "max_val": "max_val",
    "val_fraction": "val_fraction",
    "mc_samples": "mc_samples", "eval_mc": "eval_mc", "data_dir": "data_dir",
    "threads": "num_threads", "device": "device", "report_to": "report_to",
}
#: RunConfig fields holding mappings: a dotted key below them sets one entry.
_MAPPING_FIELDS = ("method_params", "dip", "model_params", "normalize")
_SCOPES = ("KEY (a run field)", "run.KEY", "method.KEY", "METHOD.KEY", "dip.KEY", "model.KEY")


def apply_run_overrides(data: dict[str, Any], overrides: Iterable[Override],
                        command: str = "dipnet train") -> dict[str, Any]:
    """Apply ``--set`` items to a RunConfig dict (in place; also returned).

    Raises:
        UserError: a key the run does not have, ``eval.*`` (train does not evaluate), or a
            ``METHOD.KEY`` naming another method than the run's.
    """
    from dipnet.experiments.run.config import RunConfig
    from dipnet.experiments.zoo.methods import list_methods

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    later: list[Override] = []
    for ov in overrides:
        head, rest = ov.head, ov.rest
        if not rest and head in fields:
            data[head] = ov.value
        elif head == "run" and rest:
            if rest[0] not in fields:
                raise UserError(f"{ov.describe()}: a run has no field {rest[0]!r}; its fields "
                                f"are {', '.join(sorted(fields))}")
            set_nested(data, rest, ov.value)
        elif rest and head in ("method", "model", *_MAPPING_FIELDS):
            key = f"{head}_params" if head in ("method", "model") else head
            if not isinstance(data.get(key), dict):
                data[key] = {}
            set_nested(data[key], rest, ov.value)
        elif head == "eval":
            raise UserError(f"{ov.describe()}: evaluation settings apply to dipnet compare "
                            "(with --evaluate) and dipnet evaluate, not to train")
        elif rest and head in list_methods():
            later.append(ov)  # once the run's method is known
        else:
            raise unknown_scope(ov, command, _SCOPES)
    method = data.get("method", RunConfig.method)
    for ov in later:
        if ov.head != method:
            raise UserError(f"{ov.describe()} sets a parameter of method {ov.head!r}, but this "
                            f"run's method is {method!r}: write --set method.{'.'.join(ov.rest)}"
                            f"=... for {method}, or choose --method {ov.head}")
        params = data.get("method_params") or {}
        set_nested(params, ov.rest, ov.value)
        data["method_params"] = params
    return data


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of ``--config`` (if any), every given flag on top, then ``--set``.

    Raises:
        UserError: a bad config file, flag value or ``--set`` item.
    """
    from dipnet.experiments.run.config import RunConfig

    data: dict[str, Any] = RunConfig.load(args.config).to_dict() if args.config else {}
    for flag, name in _FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            data[name] = value
    apply_run_overrides(data, parse_overrides(args))
    return RunConfig.from_dict(data)


def describe_metrics(metrics: dict[str, Any]) -> str:
    """``test accuracy 0.9721 (deterministic; ...), val accuracy ..., 0.05s/epoch, ...``."""
    acc_mc = metrics.get("test_accuracy_mc")
    mc = f", MC({metrics['mc_samples']}) {acc_mc:.4f}" if acc_mc is not None else ""
    val = metrics.get("val_accuracy")
    val_s = f"val accuracy {val:.4f}" if val is not None else "no validation split"
    return (f"test accuracy {metrics['test_accuracy']:.4f} ({metrics['prediction']}; "
            f"deterministic {metrics['test_accuracy_deterministic']:.4f}{mc}), {val_s}, "
            f"{metrics['time_per_epoch_s']:.2f}s/epoch, peak memory "
            f"{metrics['peak_memory_mb']:.0f} MB")


def run_train_command(args: argparse.Namespace) -> int:
    """Entry point of ``dipnet train``; returns the exit code.

    Plans the run first (every setting, the folder): a finished run with the same settings is
    reported in one line (exit 0); anything else goes to `run_training`.
    """
    from dipnet.experiments.run.distributed import DistInfo
    from dipnet.experiments.run.train import plan_run, run_training
    from dipnet.experiments.zoo.data import require_dataset_code_allowed

    cfg = config_from_args(args)
    if args.config:
        # code named only by a file is not the user's say (a flag or --allow-code is)
        trust.require_code_allowed(cfg.model, f"config file {args.config}")
        require_dataset_code_allowed(cfg.dataset, f"config file {args.config}")
    out = Path(args.out) if args.out else Path("runs") / cfg.run_name()
    info = DistInfo()
    plan = plan_run(cfg, out, overwrite=args.overwrite, local_rank=info.local_rank)
    if plan.finished is not None:
        if info.is_main:
            print(f"run in {out} already finished with the same settings: "
                  f"{describe_metrics(plan.finished)}. Nothing to do; pass --overwrite to train "
                  "it again.")
        return 0
    command = "dipnet " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    metrics = run_training(cfg, out, overwrite=args.overwrite,
                           progress=not args.no_progress, command=command)
    if metrics:  # rank 0 (other DDP ranks return {})
        print(f"{cfg.run_name()}: {describe_metrics(metrics)} -> {out}")
    return 0
