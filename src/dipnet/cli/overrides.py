"""``--set KEY=VALUE`` items, parsed when a command runs (values are YAML).

Each command decides what its keys mean (`dipnet.cli.train` for train, `dipnet.cli.sweep` for
compare, `dipnet.cli.evaluate` for evaluate, `dipnet.cli.hf` for the Hugging Face
experiments); this module only splits and parses, with one-line errors, and offers the helpers
they share (`suite_settings`; dotted keys are set with `dipnet._util.nested.set_nested`).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any, Iterable

from dipnet.errors import UserError
from dipnet.cli.grammar import OVERRIDES


@dataclass(frozen=True)
class Override:
    """One parsed ``--set`` item.

    Attributes:
        option: the option as typed (``--set``, or an old spelling such as ``--dip``).
        text: the item as typed (``m=2``).
        path: the full dotted key, split (``("dip", "m")`` for ``--dip m=2``).
        value: the value parsed as YAML (``2``).
    """

    option: str
    text: str
    path: tuple[str, ...]
    value: Any

    @property
    def head(self) -> str:
        """The first part of the key: the scope (``dip``, ``model``...) or a bare field."""
        return self.path[0]

    @property
    def rest(self) -> tuple[str, ...]:
        """The key after its scope (``("m",)`` for ``dip.m``)."""
        return self.path[1:]

    def describe(self) -> str:
        """``--set dip.m=2`` as the user typed it (for error messages)."""
        return f"{self.option} {self.text}"


# YAML 1.1 (PyYAML) reads 5e-4 as a string: it wants 5.0e-4. On a command line 5e-4 is a
# number, so the loader below also resolves exponents without a dot as floats.
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)
_LOADER: Any = None


def _yaml_load(text: str) -> Any:
    global _LOADER
    try:
        import yaml
    except ImportError:
        raise UserError("--set needs PyYAML to read its values: pip install PyYAML (every "
                        "dipnet extra that has --set installs it)") from None
    if _LOADER is None:
        class Loader(yaml.SafeLoader):
            pass

        Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
        _LOADER = Loader
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError:
        raise ValueError(text) from None


def parse_item(option: str, text: str, prefix: str = "") -> Override:
    """Parse one item (``"m=2"`` with prefix ``"dip."`` -> ``Override(path=("dip", "m"))``).

    Raises:
        UserError: no ``=``, an empty key part, or a value that is not YAML.
    """
    key, sep, raw = text.partition("=")
    path = tuple((prefix + key.strip()).split("."))
    if not sep or not key.strip() or not all(p.strip() for p in path):
        raise UserError(f"{option} {text!r} lacks '=' or a key: it must look like key=value, "
                        "i.e. KEY=VALUE with a dotted KEY and a YAML VALUE, e.g. --set dip.m=2 "
                        "or --set model.hidden=[512,512] (see docs/cli.md)")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except ValueError:
        raise UserError(f"{option} {text!r}: the value is not a number, string, list [a, b] or "
                        "mapping {k: v} in YAML syntax; quote it if it is a string") from None
    return Override(option, text, tuple(p.strip() for p in path), value)


def parse_overrides(args: argparse.Namespace) -> list[Override]:
    """Every ``--set`` item (and old spelling) of a parsed command line, in order.

    Raises:
        UserError: a malformed item (see `parse_item`).
    """
    return [parse_item(*item) for item in getattr(args, OVERRIDES, None) or []]


def unknown_scope(ov: Override, command: str, scopes: Iterable[str]) -> UserError:
    """The error for a key whose first part the command does not know."""
    return UserError(f"{ov.describe()}: {command} has no setting {'.'.join(ov.path)!r}; its "
                     f"keys are {', '.join(scopes)} (see docs/cli.md)")


def suite_settings(overrides: Iterable[Override], command: str) -> dict[str, Any]:
    """Evaluation-suite settings from ``eval.KEY`` (or, in ``dipnet evaluate``, bare ``KEY``)
    items; YAML lists become tuples (the suite's settings hold tuples).

    Raises:
        UserError: a key under another scope, or a nested key.
    """
    out: dict[str, Any] = {}
    for ov in overrides:
        path = ov.rest if ov.head == "eval" else ov.path
        if len(path) != 1:
            raise UserError(f"{ov.describe()}: {command} takes evaluation-suite settings only, "
                            "as --set eval.KEY=VALUE or --set KEY=VALUE (names in "
                            "docs/evaluation.md)")
        out[path[0]] = tuple(ov.value) if isinstance(ov.value, list) else ov.value
    return out
