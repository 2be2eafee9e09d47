"""Moved to `dipnet.experiments.report.eval_figures` (issue 21: the report's modules are one package).
This old import path names that same module."""

import sys

from dipnet.experiments.report import eval_figures as _moved

sys.modules[__name__] = _moved
