"""Summary statistics over seeds and paired tests against a baseline.

Every number in a sweep report is a mean over seeds with its spread, and every comparison with
standard training is a paired test: run i of a method and run i of standard share the seed, so
they share the data split, the initialisation stream and the batch order, and the paired test
removes that shared variance. scipy does the tests; this module only arranges the inputs and
refuses to pretend when there are too few pairs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["Summary", "PairedTest", "summarize", "paired_test", "confidence_interval",
           "LOW_POWER_NOTE"]

LOW_POWER_NOTE = (
    "With n seeds per method the paired tests have little power: at n=3 a t-test needs a "
    "difference of several standard deviations of the paired differences to reach p<0.05, and "
    "the exact Wilcoxon signed-rank test cannot go below p=0.25 (two-sided). Read p-values as "
    "a consistency check, not as proof either way.")


@dataclass(frozen=True)
class Summary:
    """Mean and spread of one quantity over seeds.

    ``std`` is the sample standard deviation (ddof=1), ``sem`` = std / sqrt(n), and
    ``ci_low``/``ci_high`` the two-sided Student-t confidence interval of the mean at ``level``.
    With n=1 the spread fields are NaN (undefined, not zero).
    """

    n: int
    mean: float
    std: float
    sem: float
    ci_low: float
    ci_high: float
    level: float = 0.95

    def to_dict(self) -> dict[str, float]:
        """Plain dict (JSON-ready; NaN is kept as NaN, the JSON writer maps it to null)."""
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison ``a - b`` over runs matched by seed.

    Takes no position on direction: ``mean_diff`` > 0 means ``a`` is larger. ``t_p`` is the
    two-sided paired t-test p-value (scipy.stats.ttest_rel), ``wilcoxon_p`` the two-sided
    Wilcoxon signed-rank p-value (exact for small n; NaN when every difference is zero, where
    the test is undefined). ``n`` counts pairs.
    """

    n: int
    mean_diff: float
    std_diff: float
    t_stat: float
    t_p: float
    wilcoxon_p: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t confidence interval of the mean.

    Takes finite values (None/NaN are dropped) and a level in (0, 1); returns (low, high),
    both NaN when fewer than two values remain. Raises ValueError for a level outside (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arr = _clean(values)
    if arr.size < 2:
        return (math.nan, math.nan)
    mean = float(arr.mean())
    sem = float(arr.std(ddof=1) / math.sqrt(arr.size))
    if sem == 0.0:
        return (mean, mean)
    low, high = _st.t.interval(level, df=arr.size - 1, loc=mean, scale=sem)
    return (float(low), float(high))


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean, sample std, SEM and t confidence interval of ``values``.

    None and non-finite entries are dropped (a failed run is not a zero). Returns a Summary
    with n=0 and NaN fields for an empty input.
    """
    arr = _clean(values)
    n = int(arr.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan, level)
    mean = float(arr.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan, math.nan, level)
    std = float(arr.std(ddof=1))
    low, high = confidence_interval(arr, level)
    return Summary(n, mean, std, std / math.sqrt(n), low, high, level)


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` against ``b``.

    Takes two equally long sequences whose i-th entries belong together (same seed). Pairs
    with a missing value on either side are dropped. Returns a PairedTest; p-values are NaN when
    fewer than two pairs remain or when the test is undefined (all differences equal).
    Raises ValueError when the lengths differ.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b)
             if x is not None and y is not None and math.isfinite(float(x))
             and math.isfinite(float(y))]
    n = len(pairs)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    diff = np.array([x - y for x, y in pairs])
    mean_diff = float(diff.mean())
    if n < 2:
        return PairedTest(n, mean_diff, math.nan, math.nan, math.nan, math.nan)
    std_diff = float(diff.std(ddof=1))
    if std_diff == 0.0:
        # Constant differences: the t statistic is infinite (or 0/0); scipy warns and returns
        # nan/inf. Report NaN rather than a misleading p of 0.
        t_stat, t_p = math.nan, math.nan
    else:
        res = _st.ttest_rel([p[0] for p in pairs], [p[1] for p in pairs])
        t_stat, t_p = float(res.statistic), float(res.pvalue)
    if np.all(diff == 0):
        w_p = math.nan
    else:
        try:
            w_p = float(_st.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
        except ValueError:
            w_p = math.nan
    return PairedTest(n, mean_diff, std_diff, t_stat, t_p, w_p)


def format_mean_std(summary: Summary | dict[str, Any], scale: float = 1.0,
                    digits: int = 2) -> str:
    """'mean ± std' text for a table cell; '-' for no data, plain mean for n=1."""
    d = summary.to_dict() if isinstance(summary, Summary) else summary
    n = d.get("n", 0)
    mean = d.get("mean")
    if not n or mean is None or not math.isfinite(mean):
        return "-"
    std = d.get("std")
    if n < 2 or std is None or not math.isfinite(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def format_p(p: float | None) -> str:
    """p-value text: '-' when undefined, '<0.001' below that, else 3 decimals."""
    if p is None or not math.isfinite(p):
        return "-"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}"
