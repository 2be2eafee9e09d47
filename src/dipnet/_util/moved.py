"""Old import paths of names that moved to another module (PEP 562 module ``__getattr__``)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def forward_moved(module: str, moved: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``module`` that imports each name in ``moved`` (name ->
    the module it moved to) from where it now is, when it is first asked for.

    Raises (from the returned function):
        AttributeError: a name that neither the module nor ``moved`` has.
    """
    def __getattr__(name: str) -> Any:
        if name in moved:
            return getattr(importlib.import_module(moved[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__
