"""The option grammar every `dipnet` subcommand shares (docs/cli.md describes it for users).

- ``--set KEY=VALUE`` (repeatable) is the one override syntax: a dotted key names the setting
  (``dip.m``, ``model.hidden``, ``method.sigma``, ``eval.attack_points``, a bare run field such
  as ``lr``), the value is YAML (``2``, ``0.5``, ``[512, 512]``, ``{mean: 0.5, std: 0.25}``).
  Parsing the values needs PyYAML, so it happens when the command runs
  (`dipnet.cli.overrides`), never while the parser is built.
- ``--threads N``, ``--device auto|cpu|cuda|cuda:N`` (default auto), ``--no-progress`` (alias
  ``--quiet``), ``--out PATH`` mean the same in every command that has them.
- The old spellings (``--param``, ``--dip``, ``--model-param``, ``--num-threads``,
  ``--out-dir``) still work for one release: each stores what its replacement stores and leaves
  a one-line notice that `dipnet.cli.main` prints once the command has run.

Only argparse and the standard library are imported here.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from dipnet.errors import UserError

#: Namespace attribute holding the ``--set`` items as (option as typed, text, key prefix).
OVERRIDES = "overrides"
#: Namespace attribute holding the deprecation notices of this command line.
NOTICES = "deprecation_notices"

SET_HELP = ("override a setting, repeatable: KEY=VALUE with a dotted KEY and a YAML VALUE, "
            "e.g. {examples} (see docs/cli.md)")


def add_notice(namespace: argparse.Namespace, text: str) -> None:
    """Record a deprecation notice (printed once, after the command ran)."""
    notices = list(getattr(namespace, NOTICES, None) or [])
    if text not in notices:
        notices.append(text)
    setattr(namespace, NOTICES, notices)


class SetAction(argparse.Action):
    """``--set KEY=VALUE``, and an old spelling that means ``--set PREFIX.KEY=VALUE``.

    Appends ``(option as typed, the text, prefix)`` to ``namespace.overrides``; with
    ``replacement`` (the new spelling, e.g. ``"--set method."``) it also records a notice.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, prefix: str = "",
                 replacement: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("metavar", "KEY=VALUE")
        super().__init__(option_strings, dest, **kwargs)
        self.prefix = prefix
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((option_string or "--set", str(values), self.prefix))
        setattr(namespace, self.dest, items)
        if self.replacement is not None:
            add_notice(namespace, f"{option_string} is deprecated and goes in the next release: "
                                  f"write {self.replacement}{values}")


class DeprecatedStore(argparse.Action):
    """An old option name that stores into its replacement's ``dest``, with a notice."""

    def __init__(self, option_strings: Sequence[str], dest: str, replacement: str = "",
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        add_notice(namespace, f"{option_string} is deprecated and goes in the next release: "
                              f"write {self.replacement} {values}")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2]; '0,5,7' -> [0, 5, 7] (``--seeds`` of every command).

    Raises:
        UserError: not a count >= 1 or a comma list of integers >= 0.
    """
    try:
        parts = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r} is not a count or a comma list of integers: write "
                        f"e.g. --seeds 3 or --seeds 0,1,2") from None
    if len(parts) == 1 and "," not in str(text):
        if parts[0] < 1:
            raise UserError(f"--seeds must be at least 1, got {parts[0]}")
        return list(range(parts[0]))
    if any(p < 0 for p in parts):
        raise UserError(f"--seeds {text!r} has a negative seed: seeds are integers >= 0")
    return parts


def add_set(p: argparse.ArgumentParser, examples: str) -> None:
    """``--set KEY=VALUE`` (repeatable)."""
    p.add_argument("--set", action=SetAction, dest=OVERRIDES, default=None,
                   help=SET_HELP.format(examples=examples))


def add_threads(p: argparse.ArgumentParser, default_text: str = "torch's choice",
                old_name: bool = False) -> None:
    """``--threads N`` (and, for the commands that had it, the old ``--num-threads``)."""
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help=f"torch CPU threads (default {default_text})")
    if old_name:
        p.add_argument("--num-threads", action=DeprecatedStore, dest="threads",
                       type=positive_int, metavar="N", replacement="--threads",
                       help="deprecated spelling of --threads")


def add_device(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device`` (auto = cuda if available, else cpu). ``default=None`` means "not given",
    for commands whose config file may set it; the effective default is still auto."""
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help="auto (cuda if available, else cpu), cpu, cuda or cuda:N "
                        "(default auto)")


def add_progress(p: argparse.ArgumentParser, what: str = "the progress bars") -> None:
    """``--no-progress`` and its alias ``--quiet``."""
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help=f"hide {what} (--quiet is the same)")


def add_report_to(p: argparse.ArgumentParser) -> None:
    """``--report-to`` (Hugging Face's ``report_to`` names)."""
    p.add_argument("--report-to", metavar="NAMES", default=None,
                   help="experiment tracking: tensorboard, mlflow, both as tensorboard,mlflow, "
                        "all, or none (default none). Per-epoch metrics, loss parts and "
                        "per-layer variances; needs pip install 'dipnet[track]' (see "
                        "docs/cli.md)")


BACKENDS = ("local", "ray", "submitit")


def add_backend(p: argparse.ArgumentParser) -> None:
    """``--backend local|ray|submitit`` and ``--address`` (docs/cluster.md)."""
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="where the runs execute: local processes (default), ray (Ray tasks on "
                        "a running cluster, see --address, or on a local Ray instance of --jobs "
                        "CPUs) or submitit (Slurm jobs; the local executor where there is no "
                        "Slurm). Same folders, resume and results; needs pip install "
                        "'dipnet[cluster]'. Settings: --set backend.KEY=VALUE, e.g. "
                        "backend.slurm_partition=gpu (docs/cluster.md)")
    p.add_argument("--address", metavar="ADDR", default=None,
                   help="with --backend ray: the running cluster, auto or HOST:PORT (default: "
                        "start a local Ray instance for this command)")


def add_old_override(p: argparse.ArgumentParser, option: str, prefix: str, what: str,
                     example: str) -> None:
    """An old key=value option kept for one release as ``--set PREFIX.KEY=VALUE``."""
    p.add_argument(option, action=SetAction, dest=OVERRIDES, prefix=prefix,
                   replacement=f"--set {prefix}",
                   help=f"deprecated: {what}; write --set {prefix}KEY=VALUE instead "
                        f"(e.g. {option} {example} is --set {prefix}{example})")
