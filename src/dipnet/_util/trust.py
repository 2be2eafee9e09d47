"""Which user code dipnet may import: received files must not run code.

A run config can name a model as ``"package.module:factory"``; building that model imports the
module, which runs it. A value read from a file (a run folder's config.yaml, a sweep YAML
someone sent) is not the user's consent; the command line is. So:

- ``--model package.module:factory`` given as a flag allows that one factory;
- ``--allow-code`` (on ``train``, ``compare`` or before any subcommand: ``dipnet --allow-code
  evaluate RUN``) allows every factory the command meets;
- a Python caller allows explicitly (``load_run(..., allow_code=True)``) or with `allowing`.

``python -m dipnet`` would also put the working folder first on ``sys.path``, so a stray
``yaml.py`` there would replace a library; `strip_working_folder` takes it off (before any
subcommand runs) and `restore_working_folder` appends it again, at the end, once code is
allowed (so the user's own modules import, but cannot shadow installed packages).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any, Iterable, Iterator

from dipnet.errors import UserError

_allow_all = False
_allowed: set[str] = set()
_removed_path: list[str] = []


def names_code(ref: object) -> bool:
    """Whether a model / data set name is a ``package.module:factory`` reference."""
    return isinstance(ref, str) and ":" in ref


def allow_code(refs: Iterable[str] | None = None) -> None:
    """Allow importing the factories ``refs`` in this process (None: every factory).

    Also puts the working folder back on ``sys.path`` if `strip_working_folder` took it off.
    """
    global _allow_all
    if refs is None:
        _allow_all = True
    else:
        _allowed.update(r for r in refs if names_code(r))
    restore_working_folder()


def code_allowed(ref: str) -> bool:
    """Whether importing ``ref`` was allowed in this process."""
    return _allow_all or ref in _allowed


def allowance() -> tuple[bool, tuple[str, ...]]:
    """This process's allowance as plain values (to pass to worker processes)."""
    return _allow_all, tuple(sorted(_allowed))


def set_allowance(state: tuple[bool, tuple[str, ...]]) -> None:
    """Adopt an allowance returned by `allowance` (in a worker process)."""
    everything, refs = state
    if everything:
        allow_code(None)
    elif refs:
        allow_code(refs)


@contextlib.contextmanager
def allowing(refs: Iterable[str]) -> Iterator[None]:
    """Allow ``refs`` inside a ``with`` block (and only there)."""
    added = {r for r in refs if names_code(r)} - _allowed
    _allowed.update(added)
    try:
        yield
    finally:
        _allowed.difference_update(added)


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Undo, on leaving, every allowance granted inside (one command line = one scope)."""
    global _allow_all
    saved = (_allow_all, set(_allowed))
    try:
        yield
    finally:
        _allow_all = saved[0]
        _allowed.clear()
        _allowed.update(saved[1])


def require_code_allowed(ref: str, source: str) -> None:
    """Refuse to import ``ref`` read from ``source`` unless the user allowed it.

    Raises:
        UserError: naming the factory, where it came from, and how to allow it.
    """
    if names_code(ref) and not code_allowed(ref):
        raise UserError(
            f"{source} names user code as its model ({ref!r}); building it would import and run "
            f"that module, so dipnet does not do it for a value read from a file. If you trust "
            f"it, pass --allow-code (e.g. dipnet --allow-code evaluate ...), give it yourself "
            f"with --model {ref}, or call load_run(..., allow_code=True).")


def load_factory(ref: str, what: str) -> Any:
    """The object ``"package.module:name"`` names (importing the module; check
    `require_code_allowed` first where ``ref`` was read from a file).

    Args:
        ref: ``"package.module:name"``.
        what: what the factory makes, for the message (``"model"``, ``"data set"``).
    Raises:
        UserError: the module does not import or has no such name.
    """
    module_name, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"cannot load {what} factory {ref!r} ({err}); give it as "
                        "'package.module:function' importable from the current "
                        "environment.") from None


def strip_working_folder() -> list[str]:
    """Remove the working folder ('' or its path) from ``sys.path``; returns what was removed.

    ``python -m`` and ``torchrun -m`` put it first, so any module there (``yaml.py``,
    ``evil.py``) would be imported in place of, or beside, the real ones.
    """
    cwd = os.path.realpath(os.getcwd())
    removed = [p for p in sys.path if p in ("", ".") or _same_dir(p, cwd)]
    sys.path[:] = [p for p in sys.path if p not in removed]
    _removed_path.extend(removed)
    return removed


def restore_working_folder() -> None:
    """Append the entries `strip_working_folder` removed, at the end of ``sys.path``."""
    while _removed_path:
        entry = _removed_path.pop(0)
        if entry not in sys.path:
            sys.path.append(entry)


def _same_dir(path: str, cwd: str) -> bool:
    try:
        return os.path.realpath(path) == cwd
    except (OSError, ValueError):
        return False
