"""Whether an optional module is installed, found without importing it."""

from __future__ import annotations

import importlib.util


def module_installed(name: str) -> bool:
    """Whether the module ``name`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken __spec__
        return False
