"""The `dipnet` command line: a thin dispatcher over subcommands defined beside their logic.

Each subcommand module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` (a callable taking the parsed args and returning an exit code). Modules whose optional
dependencies are missing are skipped, so ``dipnet --help`` always works.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .config import DIPConfigError
from .errors import UserError
from .inject import AlreadyProjectedError, NotProjectedError, ProjectionFileError
from .projection import ProjectionShapeError
from .targeting import TargetError

# Order is the order shown in --help.
SUBCOMMAND_MODULES = (
    "dipnet.experiments.cli",     # train
    "dipnet.experiments.sweep_cli",  # compare, report, demo
    "dipnet.evaluation.cli",      # evaluate
    "dipnet.hf_experiments.cli",  # text / math experiments with Hugging Face models
)

_CLEAN_ERRORS = (UserError, DIPConfigError, TargetError, ProjectionFileError,
                 ProjectionShapeError, AlreadyProjectedError, NotProjectedError,
                 FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="dipnet",
        description="Train, compare and evaluate DIPNet (Distributional Input Projection "
                    "Networks) against standard training and regularisation baselines.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and (err.name == name or name.startswith(err.name + ".")):
                continue  # that part of dipnet is not built yet / not installed
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dipnet` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dipnet: interrupted", file=sys.stderr)
        return 130
    except _CLEAN_ERRORS as err:
        if args.debug:
            raise
        print(f"dipnet: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
