"""``dipnet text-classify`` and ``dipnet math``: the Hugging Face experiments on the command line.

The options are defined in `dipnet.commands.hf` (one per settings field, no heavy imports);
this module turns them, and the ``--set`` items, into `TextSettings` / `MathSettings` and runs
the experiment. ``--set KEY=VALUE`` names a field (``lr``, ``lora_r``); a dotted key joins with
underscores (``dip.m`` is ``dip_m``, ``rs.sigma`` is ``rs_sigma``). A method's setting given
while that method is not among ``--methods`` is an error, never silently unused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
from pathlib import Path
from typing import Any, Iterator

from dipnet.experiments.run.seeds import parse_seeds
from dipnet.commands.hf import FIELD_METHOD, MATH_FIELDS, TEXT_FIELDS, scalar_type
from dipnet.commands.overrides import parse_overrides
from dipnet.errors import UserError


def register(subparsers: Any) -> None:
    """Add the ``text-classify`` and ``math`` subcommands (defined in `dipnet.commands.hf`)."""
    from dipnet.commands import hf

    hf.register(subparsers)


def _coerce(name: str, kind: str, value: Any, given_as: str) -> Any:
    """A ``--set`` value checked against the field's type (ints widen to floats; a scalar
    becomes a one-element list for list fields)."""
    cast = scalar_type(kind)

    def one(v: Any) -> Any:
        if cast is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, cast) and not isinstance(v, bool):
            return v
        raise UserError(f"{given_as}: {name} takes {kind.rstrip('?')} values, got {v!r}")

    if kind.startswith("list["):
        return [one(v) for v in (value if isinstance(value, list) else [value])]
    if value is None and kind.endswith("?"):
        return None
    return one(value)


def settings_from_args(cls: Any, fields: list[tuple[str, str, Any, str]],
                       args: argparse.Namespace) -> tuple[Any, set[str]]:
    """The settings of a command line: the CLI defaults, given flags, then ``--set`` items.

    Returns:
        (the settings, the names of the fields the user gave).
    Raises:
        UserError: an unknown ``--set`` key or a value of the wrong type.
    """
    kinds = {name: kind for name, kind, _, _ in fields}
    values = {name: default for name, _, default, _ in fields}
    given: set[str] = set()
    for name in values:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
            given.add(name)
    if isinstance(values["seeds"], str):  # --seeds 3 or --seeds 0,5,7, as in dipnet compare
        values["seeds"] = parse_seeds(values["seeds"])
    for ov in parse_overrides(args):
        name = "_".join(ov.path)
        if name not in values:
            raise UserError(f"{ov.describe()}: dipnet {args.command} has no setting {name!r}; "
                            f"its settings are {', '.join(values)} (see --help)")
        value = ov.value
        if name == "seeds" and isinstance(value, (int, str)) and not isinstance(value, bool):
            value = parse_seeds(str(value))  # --set seeds=3 means 0,1,2 too
        values[name] = _coerce(name, kinds[name], value, ov.describe())
        given.add(name)
    declared = {f.name for f in dataclasses.fields(cls)}
    if set(values) != declared:  # the CLI's copy of the fields must follow the dataclass
        raise UserError(f"dipnet {args.command}: the command line's settings "
                        f"{sorted(set(values) ^ declared)} do not match {cls.__name__}; "
                        "reinstall dipnet")
    return cls(**values), given


def _check_applicable(settings: Any, given: set[str], command: str) -> None:
    chosen = {m.partition("@")[0] for m in settings.methods}  # dipnet@layers is dipnet
    unused = [n for n in sorted(given) if n in FIELD_METHOD
              and not chosen & set(FIELD_METHOD[n])]
    if unused:
        methods = sorted({m for n in unused for m in FIELD_METHOD[n]})
        raise UserError(f"dipnet {command}: {', '.join('--' + n.replace('_', '-') for n in unused)}"
                        f" appl{'ies' if len(unused) == 1 else 'y'} only to "
                        f"{' or '.join(methods)}, not among --methods "
                        f"{','.join(settings.methods)}: add one or drop the option")


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run(module: str, settings_cls: str, fields: list[tuple[str, str, Any, str]],
         args: argparse.Namespace) -> int:
    """Run (or, with --report-only, only re-report) one experiment and print its table."""
    mod = importlib.import_module(f"{__package__}.{module}")
    settings, given = settings_from_args(getattr(mod, settings_cls), fields, args)
    _check_applicable(settings, given, args.command)
    settings.device = _resolve_device(settings.device)
    with _quiet(args.no_progress):
        if args.report_only:
            mod.write_report(settings.out_dir)
        else:
            mod.run_sweep(settings)
    print(Path(settings.out_dir, "results.md").read_text())
    return 0


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """With ``--no-progress``: nothing reaches the terminal while the experiment runs (tqdm's
    bars write to stderr, the Trainer's log lines to stdout); errors still propagate."""
    if not enabled:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def text_command(args: argparse.Namespace) -> int:
    """``dipnet text-classify``."""
    return _run("text", "TextSettings", TEXT_FIELDS, args)


def math_command(args: argparse.Namespace) -> int:
    """``dipnet math``."""
    return _run("math", "MathSettings", MATH_FIELDS, args)
