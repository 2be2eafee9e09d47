"""`dipnet train`: one training run from flags and/or a YAML config (flags win)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from .. import trust
from ..errors import UserError
from .config import PERTURBATION_MODES, PERTURBATIONS, RunConfig


def parse_key_values(items: list[str] | None, option: str) -> dict[str, Any]:
    """``["a=1", "b=[2, 3]"]`` -> ``{"a": 1, "b": [2, 3]}`` (values parsed as YAML).

    Raises:
        UserError: an item without ``=``, or a value that is not YAML.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} {item!r} must look like key=value (e.g. {option} "
                            "sigma=0.5).")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise UserError(f"{option} {item!r}: the value is not a number, string, list or "
                            "mapping in YAML syntax.") from None
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    from .data import list_datasets
    from .methods import list_methods
    from .models import list_models

    p = subparsers.add_parser(
        "train", help="train one model with one method on one data set",
        description="Train one run and write config.yaml, metrics.json, train.log, checkpoints "
                    "and model.safetensors into --out. Every setting is checked, the data "
                    "loaded and the model built before anything in --out changes; the folder is "
                    "then locked against other dipnet processes. An interrupted run resumes "
                    "from its last checkpoint; a finished one is reused only if its settings "
                    "are the same (otherwise refused, naming the differences) unless "
                    "--overwrite. Flags override the values of --config. Under `torchrun "
                    "--nproc_per_node=N -m dipnet train ...` it trains data-parallel (DDP).")
    p.add_argument("--config", metavar="FILE", help="YAML run config (e.g. a run's config.yaml); "
                   "flags given on the command line override its values")
    p.add_argument("--dataset", help=f"data set: {', '.join(list_datasets())} (default digits)")
    p.add_argument("--model", help=f"model: {', '.join(list_models())}, or "
                   "package.module:factory (default mlp)")
    p.add_argument("--method", help=f"training method: {', '.join(list_methods())} "
                   "(default standard)")
    p.add_argument("--epochs", type=int, help="training epochs (default 10)")
    p.add_argument("--seed", type=int, help="seed of initialisation, batch order and noise "
                   "(default 0)")
    p.add_argument("--out", metavar="DIR", help="results folder (default runs/<run name>, "
                   "e.g. runs/digits-mlp-dipnet-none-s0)")
    p.add_argument("--batch-size", type=int, help="global mini-batch size (default 128)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"],
                   help="optimizer (default adam)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"],
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
                   "for validation (default 0.1)")
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
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="method parameter, repeatable (e.g. --param sigma=0.5, --param rho=0.1)")
    p.add_argument("--dip", action="append", metavar="KEY=VALUE",
                   help="DIPConfig field for --method dipnet, repeatable (e.g. --dip "
                        "placement=input --dip gamma=0.05 --dip m=2)")
    p.add_argument("--model-param", action="append", metavar="KEY=VALUE",
                   help="model parameter, repeatable (e.g. --model-param 'hidden=[512, 512]', "
                        "--model-param depth=20)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: "
                   "torch's choice)")
    p.add_argument("--device", help="auto (default: cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a finished or partial run in --out and train again (only "
                        "once the new run's data and model are ready)")
    p.add_argument("--allow-code", action="store_true",
                   help="allow a --config file to name user code as its model "
                        "(package.module:factory); without it such a file is refused")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run_train_command)


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
    "threads": "num_threads",
    "device": "device",
}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of ``--config`` (if any) with every given flag applied on top.

    Raises:
        UserError: a bad config file, flag value or key=value item.
    """
    data: dict[str, Any] = RunConfig.load(args.config).to_dict() if args.config else {}
    for flag, name in _FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            data[name] = value
    for flag, name in (("param", "method_params"), ("dip", "dip"),
                       ("model_param", "model_params")):
        extra = parse_key_values(getattr(args, flag, None), "--" + flag.replace("_", "-"))
        if extra:
            data[name] = {**(data.get(name) or {}), **extra}
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig.from_dict({k: v for k, v in data.items() if k in known})


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
    from .train import DistInfo, plan_run, run_training

    cfg = config_from_args(args)
    if args.config:
        # a model named only by a file is not the user's say (a --model flag or --allow-code is)
        trust.require_code_allowed(cfg.model, f"config file {args.config}")
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
