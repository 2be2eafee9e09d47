"""How torch's OpenMP threads wait, for the `dipnet` command line (no torch import here)."""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, MutableMapping

#: Iterations a waiting OpenMP thread spins before it sleeps (GNU libgomp, which torch's Linux
#: wheels use; libgomp's own default is 300,000, or 0 with OMP_WAIT_POLICY=PASSIVE).
SPINCOUNT = "3000"


def limit_openmp_spinning(modules: Mapping[str, Any] | None = None,
                          environ: MutableMapping[str, str] | None = None) -> bool:
    """Bound how long torch's OpenMP threads spin at a barrier before they sleep:
    ``GOMP_SPINCOUNT=3000``, unless the user set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``.
    Only before torch is imported (the OpenMP runtime reads it when torch loads).

    Args:
        modules: the loaded modules (default ``sys.modules``).
        environ: the environment to change (default ``os.environ``).
    Returns:
        whether it was set here.

    Why: with as many threads as cores (torch's default) on a machine whose cores are busy
    with other work, a thread spins at every barrier while its partner waits for a core.
    Measured on the 2-core machine of this project (a 2-epoch `dipnet train` of the demo's MLP
    / a quick `dipnet evaluate` of it), wall seconds:

    =========================  ===============  ============  =======================
    other core                 libgomp default  this (3000)   OMP_WAIT_POLICY=PASSIVE
    =========================  ===============  ============  =======================
    idle                       3.43 / 7.6       3.56 / 7.9    4.05 / 9.1
    busy (one spinning proc)   5.6-21.8 / 56.6  4.2-5.0 / 12  3.8-4.1 / 11.0
    =========================  ===============  ============  =======================
    """
    modules = sys.modules if modules is None else modules
    environ = os.environ if environ is None else environ
    if "torch" in modules or "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return False
    environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return True
