"""Moved to `dipnet.experiments.report.variance` (issue 21: the report's modules are one package).
This old import path names that same module."""

import sys

from dipnet.experiments.report import variance as _moved

sys.modules[__name__] = _moved
