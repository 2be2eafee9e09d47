"""The `dipnet` command line: a thin dispatcher over subcommands defined beside their logic.

Each subcommand module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` (a callable taking the parsed args and returning an exit code). Modules whose optional
dependencies are missing are skipped, so ``dipnet --help`` always works. A known subcommand
imports only its own module (``dipnet train`` does not pay for the Hugging Face stack).

Errors a user can cause end as ONE line (``dipnet: error: ...``, exit 2): `UserError`, the
core's configuration errors, and every OSError (named path, errno text). ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import trust
from .config import DIPConfigError
from .errors import UserError, describe_os_error
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
#: The module that registers each subcommand (a subcommand missing here imports them all).
SUBCOMMANDS = {
    "train": "dipnet.experiments.cli",
    "compare": "dipnet.experiments.sweep_cli",
    "report": "dipnet.experiments.sweep_cli",
    "demo": "dipnet.experiments.sweep_cli",
    "evaluate": "dipnet.evaluation.cli",
    "text-classify": "dipnet.hf_experiments.cli",
    "math": "dipnet.hf_experiments.cli",
}

_CLEAN_ERRORS = (UserError, DIPConfigError, TargetError, ProjectionFileError,
                 ProjectionShapeError, AlreadyProjectedError, NotProjectedError)


def _subcommand(argv: Sequence[str]) -> str | None:
    """The first argument that is not a top-level option (they take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``argv``, only the module of its subcommand is imported."""
    parser = argparse.ArgumentParser(
        prog="dipnet",
        description="Train, compare and evaluate DIPNet (Distributional Input Projection "
                    "Networks) against standard training and regularisation baselines.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    parser.add_argument("--allow-code", dest="allow_code_global", action="store_true",
                        help="allow importing user code named as package.module:factory in "
                             "files this command reads (run folders, configs); without it such "
                             "a file is refused, and `python -m dipnet` does not import from "
                             "the working folder")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = SUBCOMMAND_MODULES
    wanted = SUBCOMMANDS.get(_subcommand(argv) or "") if argv is not None else None
    if wanted is not None:
        modules = (wanted,)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and (err.name == name or name.startswith(err.name + ".")):
                continue  # that part of dipnet is not built yet / not installed
            raise
        module.register(sub)
    return parser


def _grant_code(args: argparse.Namespace) -> None:
    """The user's say on the command line: --allow-code, or a --model factory flag."""
    if getattr(args, "allow_code_global", False) or getattr(args, "allow_code", False):
        trust.allow_code(None)
    model = getattr(args, "model", None)
    if trust.names_code(model):
        trust.allow_code([model])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dipnet` command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with trust.scope():
            _grant_code(args)
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dipnet: interrupted", file=sys.stderr)
        return 130
    except _CLEAN_ERRORS as err:
        if args.debug:
            raise
        print(f"dipnet: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # permission denied, read-only, no space, a file in the way...
        if args.debug:
            raise
        print(f"dipnet: error: {describe_os_error(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
