"""Moved to `dipnet.experiments.report.style` (issue 21: the report's modules are one package).
This old import path names that same module."""

import sys

from dipnet.experiments.report import style as _moved

sys.modules[__name__] = _moved
