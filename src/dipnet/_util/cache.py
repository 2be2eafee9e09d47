"""Where dipnet caches what it parses or generates (data sets, corrupted test sets)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where parsed / generated data is cached: $DIPNET_CACHE or ~/.cache/dipnet."""
    return Path(os.environ.get("DIPNET_CACHE") or Path.home() / ".cache" / "dipnet")
