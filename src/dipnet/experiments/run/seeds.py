"""The one rule for ``--seeds`` (a count or a comma list), shared by the CLI and the harness
(kept free of heavy imports: the CLI parser reads it)."""

from __future__ import annotations

from dipnet.errors import UserError


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
