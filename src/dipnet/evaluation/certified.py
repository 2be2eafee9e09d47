"""Moved to `dipnet.experiments.certified` (issue 21: certifying a run folder is the harness's,
and the evaluation library imports no harness). This old import path names that same module."""

import sys

from dipnet.experiments import certified as _moved

sys.modules[__name__] = _moved
