"""``dipnet evaluate``: its options are defined beside the suite, in `dipnet.evaluation.cli`,
whose parser imports only the suite's settings (`dipnet.evaluation.settings`: no torch);
tests/test_cli_startup.py keeps it so."""

from __future__ import annotations

import argparse

RUN = "dipnet.evaluation.cli:run_evaluate_command"
EXTRA = "eval"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    from dipnet.evaluation import cli

    cli.register(subparsers)
    subparsers.choices["evaluate"].set_defaults(run=RUN, extra=EXTRA)
