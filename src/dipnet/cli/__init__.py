"""The `dipnet` command line: one parser for every subcommand, built without heavy imports.

One module per command, each holding its options (argparse and the standard library only) and
its implementation, whose heavy imports (torch, the harness) happen inside the functions that
run. ``dipnet --help``, ``dipnet COMMAND --help`` and ``dipnet --version`` therefore answer at
once and work on a core-only install. A subcommand's implementation (``"module:function"``) is
called only after a check, without importing anything, that the modules of its pip extra are
installed: a missing one is ONE line naming the extra to install.

==============  ==========================================  ===========
command         implementation                              extra
==============  ==========================================  ===========
train           dipnet.cli.train:run_train_command          experiments
compare         dipnet.cli.sweep:compare_command            experiments
report          dipnet.cli.sweep:report_command             experiments
demo            dipnet.cli.sweep:demo_command               experiments
tune            dipnet.cli.tune:tune_command                tune
evaluate        dipnet.cli.evaluate:run_evaluate_command    eval
certify         dipnet.cli.certify:run_certify_command      eval
text-classify   dipnet.cli.hf:text_command                  text
math            dipnet.cli.hf:math_command                  math
==============  ==========================================  ===========

The grammar shared by all of them (``--set`` overrides, ``--threads``, ``--device``,
``--no-progress``, ``--out``, ``--seeds`` and the deprecated old spellings) lives in
`dipnet.cli.grammar` and `dipnet.cli.overrides`; the names shown in ``--help`` (data sets,
models, methods) in `dipnet.cli.names`.

Errors a user can cause end as ONE line (``dipnet: error: ...``, exit 2): `UserError`, the
core's configuration errors, every OSError (named path, errno text) and a missing optional
dependency. ``--debug`` shows the traceback instead. Old option spellings leave a notice that is
printed (``dipnet: note: ...``) once the command has run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Sequence

from dipnet._util import trust
from dipnet._util.modules import module_installed
from dipnet.cli.grammar import NOTICES
from dipnet.errors import UserError, describe_os_error
from dipnet._util.threads import limit_openmp_spinning

#: The modules that register subcommands, in the order ``dipnet --help`` lists them.
COMMAND_MODULES = (
    "dipnet.cli.train",     # train
    "dipnet.cli.sweep",     # compare, report, demo
    "dipnet.cli.tune",      # tune
    "dipnet.cli.evaluate",  # evaluate
    "dipnet.cli.certify",   # certify
    "dipnet.cli.hf",        # text-classify, math
)

#: The modules each pip extra provides, checked with `importlib.util.find_spec` (no import)
#: before a subcommand of that extra runs. Kept in step with pyproject.toml's extras.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "experiments": ("yaml", "tqdm", "numpy", "scipy", "matplotlib", "sklearn",
                    "pytorch_optimizer", "markdown_it"),
    "eval": ("yaml", "tqdm", "numpy", "sklearn", "scipy"),
    "tune": ("optuna", "yaml", "tqdm", "numpy", "scipy", "matplotlib", "sklearn",
             "pytorch_optimizer", "markdown_it"),
    "text": ("transformers", "accelerate", "peft", "numpy", "scipy", "matplotlib", "tqdm"),
    "math": ("transformers", "accelerate", "peft", "numpy", "scipy", "matplotlib", "tqdm",
             "reasoning_gym"),
}

# The core's own error types, reported as one line like UserError. They are looked up only in
# modules already imported (a module that was never imported cannot have raised), so the
# command line never imports torch just to name them.
_CORE_ERRORS = {
    "dipnet.config": ("DIPConfigError",),
    "dipnet.targeting": ("TargetError",),
    "dipnet.inject": ("ProjectionFileError", "AlreadyProjectedError", "NotProjectedError"),
    "dipnet.projection": ("ProjectionShapeError",),
}


class LazyCommand:
    """A subcommand's implementation named as ``"module:function"``, imported when called."""

    def __init__(self, ref: str) -> None:
        self.ref = ref

    def __call__(self, args: argparse.Namespace) -> int:
        module, _, name = self.ref.partition(":")
        return getattr(importlib.import_module(module), name)(args)

    def __repr__(self) -> str:
        return f"LazyCommand({self.ref!r})"


class _Version(argparse.Action):
    """``--version``: reads the installed metadata only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from dipnet._util.version import installed_version

        print(f"dipnet {installed_version()}")
        parser.exit()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of every subcommand (``argv`` is accepted for compatibility and not
    needed: building the parser is cheap and imports neither torch nor any extra)."""
    parser = argparse.ArgumentParser(
        prog="dipnet",
        description="Train, compare and evaluate DIPNet (Distributional Input Projection "
                    "Networks) against standard training and regularisation baselines. "
                    "One grammar for every command: docs/cli.md.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    parser.add_argument("--allow-code", dest="allow_code_global", action="store_true",
                        help="allow importing user code named as package.module:factory in "
                             "files this command reads (run folders, configs); without it such "
                             "a file is refused, and `python -m dipnet` does not import from "
                             "the working folder")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for p in sub.choices.values():
        p.set_defaults(func=LazyCommand(p.get_default("run")))
    return parser


def _grant_code(args: argparse.Namespace) -> None:
    """The user's say on the command line: --allow-code, or a --model / --dataset factory."""
    if getattr(args, "allow_code_global", False) or getattr(args, "allow_code", False):
        trust.allow_code(None)
    for flag in ("model", "dataset"):
        value = getattr(args, flag, None)
        if trust.names_code(value) and not str(value).endswith(".npz"):
            trust.allow_code([value])


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` (`EXTRA_MODULES`) that are not installed; none is imported."""
    return [module for module in EXTRA_MODULES.get(extra, ()) if not module_installed(module)]


def _install_hint(command: str, extra: str, missing: Sequence[str]) -> str:
    return (f"dipnet {command} needs the '{extra}' extra (not installed: {', '.join(missing)}): "
            f"pip install 'dipnet[{extra}]'")


def _clean_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [UserError]
    for module, names in _CORE_ERRORS.items():
        if module in sys.modules:
            found += [getattr(sys.modules[module], n) for n in names]
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dipnet` command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    extra = getattr(args, "extra", None)
    limit_openmp_spinning()  # before any command imports torch
    try:
        with trust.scope():
            _grant_code(args)
            missing = missing_modules(extra) if extra else []
            if missing:
                raise UserError(_install_hint(args.command, extra, missing))
            code = int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dipnet: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:  # an optional dependency deeper down
        top = (err.name or "").split(".")[0]
        if args.debug or not top or top == "dipnet":
            raise
        print(f"dipnet: error: {_install_hint(args.command, extra or 'all', [top])}",
              file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 (sorted below; everything else re-raised)
        if args.debug:
            raise
        if isinstance(err, _clean_errors()):
            print(f"dipnet: error: {err}", file=sys.stderr)
            return 2
        if isinstance(err, OSError):  # permission denied, read-only, no space, a file in the way
            print(f"dipnet: error: {describe_os_error(err)}", file=sys.stderr)
            return 2
        raise
    for notice in getattr(args, NOTICES, None) or []:
        print(f"dipnet: note: {notice}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
