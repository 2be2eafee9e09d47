"""Moved to `dipnet.experiments.report.scorecard` (issue 21: the report's modules are one package).
This old import path names that same module."""

import sys

from dipnet.experiments.report import scorecard as _moved

sys.modules[__name__] = _moved
