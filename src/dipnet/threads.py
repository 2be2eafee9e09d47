"""OpenMP thread waiting for the `dipnet` command line (no torch import here)."""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, MutableMapping


def passive_openmp_threads(modules: Mapping[str, Any] | None = None,
                           environ: MutableMapping[str, str] | None = None) -> bool:
    """Make torch's OpenMP threads sleep, not spin, while they wait: ``OMP_WAIT_POLICY=PASSIVE``
    unless the user set it. Only before torch is imported (the OpenMP runtime reads it when
    torch loads).

    Args:
        modules: the loaded modules (default ``sys.modules``).
        environ: the environment to change (default ``os.environ``).
    Returns:
        whether it was set here.

    Why: with as many threads as cores (torch's default) on a machine whose cores are busy
    with other work, a thread spins at every barrier while its partner waits for a core. On the
    2-core machine of this project under a load of 2: the demo's evaluation of a DIPNet run took
    67 s with 2 threads instead of 4.1 s with PASSIVE; a 2-epoch `dipnet train` 13.9 s instead
    of 4.6 s.
    """
    modules = sys.modules if modules is None else modules
    environ = os.environ if environ is None else environ
    if "torch" in modules or "OMP_WAIT_POLICY" in environ:
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
