"""Setting a value deep inside nested dicts (a dotted ``--set`` key, a sweep's parameters)."""

from __future__ import annotations

from typing import Any, Sequence


def set_nested(target: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    """``target[k1][k2]... = value``, creating (or replacing non-dict) levels on the way."""
    for k in keys[:-1]:
        nxt = target.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            target[k] = nxt
        target = nxt
    target[keys[-1]] = value
