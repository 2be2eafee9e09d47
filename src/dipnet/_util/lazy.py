"""Names a package exports from its submodules, imported when first asked for (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_names(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``module`` that imports each name in ``names`` (name ->
    the submodule that defines it) when it is first asked for, so that importing the package
    (or one light submodule of it) does not import the heavy ones.

    Raises (from the returned function):
        AttributeError: a name that neither the module nor ``names`` has.
    """
    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__
