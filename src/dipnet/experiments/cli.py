"""`dipnet train`: one training run from flags, ``--set`` overrides and/or a YAML config.

The options are defined in `dipnet.commands.train` (no heavy imports); this module runs the
command. Precedence: ``--config`` file < flags < ``--set`` items. What the ``--set`` keys of
``train`` mean (docs/cli.md):

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
from typing import Any, Iterable

from dipnet import trust
from dipnet._util.nested import set_nested
from dipnet.commands.overrides import Override, parse_overrides, unknown_scope
from dipnet.errors import UserError
from dipnet.experiments.run.config import RunConfig
from dipnet.experiments.zoo.data import require_dataset_code_allowed


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand (defined in `dipnet.commands.train`)."""
    from dipnet.commands import train

    train.register(subparsers)


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
    from dipnet.experiments.run.train import DistInfo, plan_run, run_training

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
