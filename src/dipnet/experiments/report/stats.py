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
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["Summary", "PairedTest", "summarize", "paired_test", "confidence_interval",
           "low_power_note", "wilcoxon_floor", "is_significant", "format_paired_p",
           "ALPHA", "MIN_PAIRS_FOR_SIGNIFICANCE", "RELATIVE_TOLERANCE", "CONSTANT_DIFFERENCE"]

#: Significance level of the report's star.
ALPHA = 0.05
#: Fewer pairs than this never get a star: with two pairs a t-test has one degree of freedom
#: and the exact Wilcoxon test cannot go below p = 0.5.
MIN_PAIRS_FOR_SIGNIFICANCE = 3
#: Spread of the paired differences at or below RELATIVE_TOLERANCE * max(1, |mean difference|)
#: is round-off, not data: the differences are constant and no test is defined. Metrics here are
#: float32 fractions or seconds written as float64: a difference of two such values carries up
#: to about 1.2e-7 of round-off (float32's relative precision is 6e-8), so constant differences
#: read back with a spread of 3e-8 (measured: three seeds each 4 of 200 points apart). 1e-6 is
#: ten times above that and 100 times below the smallest real spread an accuracy can have
#: (one test example in 10,000 is 1e-4).
RELATIVE_TOLERANCE = 1e-6
#: What a table shows in place of a p-value when the differences are constant.
CONSTANT_DIFFERENCE = "n/a (constant difference)"


def wilcoxon_floor(n: int) -> float:
    """Smallest two-sided p-value the exact Wilcoxon signed-rank test can give with n pairs.

    Every difference of the same sign is the most extreme of the 2^n equally likely sign
    patterns, on either side: p = 2 / 2^n (0.5 at n=2, 0.25 at n=3, 0.0625 at n=5, 0.03125 at
    n=6, the first n where it can fall below 0.05). Returns NaN for n < 1.
    """
    return math.nan if n < 1 else min(1.0, 2.0 / 2.0 ** n)


def low_power_note(n: int) -> str:
    """The report's caveat for a comparison over ``n`` seeds (n >= 1), with the true floors."""
    floor = wilcoxon_floor(n)
    return (f"With {n} seeds per method the paired tests have little power: a t-test with "
            f"{max(n - 1, 0)} degree(s) of freedom needs a difference of several standard "
            "deviations of the paired differences to reach p<0.05, and the exact two-sided "
            f"Wilcoxon signed-rank test cannot go below 2/2^{n} = {floor:.4g} with {n} pairs "
            "(below 0.05 only from 6 pairs on). Stars (t-test p<0.05) are given only with at "
            f"least {MIN_PAIRS_FOR_SIGNIFICANCE} pairs, and never when the differences are "
            "constant (no spread, no test). Read p-values as a consistency check, not as "
            "proof either way.")


def is_significant(p: float | None, n: int) -> bool:
    """True when ``p`` is a finite p-value below ALPHA from at least MIN_PAIRS_FOR_SIGNIFICANCE
    pairs; False for anything else (NaN, None, too few pairs)."""
    return (p is not None and isinstance(p, (int, float)) and math.isfinite(p)
            and p < ALPHA and n >= MIN_PAIRS_FOR_SIGNIFICANCE)


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
    Wilcoxon signed-rank p-value (exact for small n without ties). ``n`` counts pairs.
    ``ci_low``/``ci_high`` bound the 95% Student-t confidence interval of the mean difference
    (NaN below two pairs). ``degenerate`` is True when the differences are constant up to
    round-off (see RELATIVE_TOLERANCE): then both p-values and ``t_stat`` are NaN, because no
    test is defined, and the interval has zero width. ``significant``: t-test p < ALPHA with at
    least MIN_PAIRS_FOR_SIGNIFICANCE pairs (what the report stars).
    """

    n: int
    mean_diff: float
    std_diff: float
    t_stat: float
    t_p: float
    wilcoxon_p: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    degenerate: bool = False

    @property
    def significant(self) -> bool:
        """Whether the report stars this comparison (never for degenerate or n < 3)."""
        return not self.degenerate and is_significant(self.t_p, self.n)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), including ``significant``."""
        return {**asdict(self), "significant": self.significant}


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


def paired_test(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedTest:
    """Paired t-test, Wilcoxon signed-rank test and t interval of ``a - b``.

    Takes two equally long sequences whose i-th entries belong together (same seed) and the
    confidence level of the interval. Pairs with a missing value on either side are dropped.
    Returns a PairedTest: p-values are NaN below two pairs and when the differences are
    constant up to round-off (``degenerate``), where a test is undefined and scipy would
    otherwise return a p-value of about 1e-16 from a spread of 1e-11. Raises ValueError when
    the lengths differ or the level is outside (0, 1).
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b)
             if x is not None and y is not None and math.isfinite(float(x))
             and math.isfinite(float(y))]
    n = len(pairs)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    xs = np.array([p[0] for p in pairs])
    ys = np.array([p[1] for p in pairs])
    diff = xs - ys
    # A difference within round-off of its operands is a zero (0.1 + 0.2 - 0.3 = 5.6e-17 must
    # not be ranked as the smallest positive difference by the Wilcoxon test).
    scale = np.maximum(1.0, np.maximum(np.abs(xs), np.abs(ys)))
    diff = np.where(np.abs(diff) <= RELATIVE_TOLERANCE * scale, 0.0, diff)
    mean_diff = float(diff.mean())
    if n < 2:
        return PairedTest(n, mean_diff, math.nan, math.nan, math.nan, math.nan)
    std_diff = float(diff.std(ddof=1))
    if std_diff <= RELATIVE_TOLERANCE * max(1.0, abs(mean_diff)):
        # Constant differences: t = mean / 0 (or 0/0) and every sign pattern ties; no test.
        return PairedTest(n, mean_diff, std_diff, math.nan, math.nan, math.nan,
                          mean_diff, mean_diff, degenerate=True)
    ci_low, ci_high = confidence_interval(diff, level)
    res = _st.ttest_1samp(diff, 0.0)  # = ttest_rel(a, b), on the round-off-cleaned differences
    t_stat, t_p = float(res.statistic), float(res.pvalue)
    if np.all(diff == 0):
        w_p = math.nan
    else:
        try:
            w_p = float(_st.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
        except ValueError:
            w_p = math.nan
    return PairedTest(n, mean_diff, std_diff, t_stat, t_p, w_p, ci_low, ci_high)


def paired_by_seed(a: Mapping[Any, float], b: Mapping[Any, float],
                   level: float = 0.95) -> PairedTest:
    """`paired_test` of ``a - b`` over the seeds (keys) both mappings hold, in seed order.

    Takes two mappings seed -> value (a run that one side lacks is left out) and the level of
    the interval; returns the PairedTest (n counts the shared seeds).
    """
    seeds = sorted(set(a) & set(b))
    return paired_test([a[s] for s in seeds], [b[s] for s in seeds], level)


def format_paired_p(test: PairedTest | dict[str, Any] | None, which: str = "t_p",
                    star: bool = True) -> str:
    """p-value text of one paired test for a table cell.

    Takes a PairedTest (or its dict), which p-value (``"t_p"`` or ``"wilcoxon_p"``) and whether
    to append the star. Returns CONSTANT_DIFFERENCE for constant differences, '-' when
    undefined, else format_p's text, with '*' when the comparison is significant (only the
    t-test p is starred).
    """
    if test is None:
        return "-"
    d = test.to_dict() if isinstance(test, PairedTest) else test
    if d.get("degenerate"):
        return CONSTANT_DIFFERENCE
    p = d.get(which)
    text = format_p(p if isinstance(p, (int, float)) else None)
    sig = d.get("significant")
    if sig is None:  # a dict written before the field existed: recompute
        sig = is_significant(p, int(d.get("n") or 0))
    return text + ("*" if star and which == "t_p" and sig else "")


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


def holm(p_values: Sequence[float | None]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of a family of tests, in the input order.

    Takes raw p-values (None or NaN for a test that could not be made: they stay NaN and do not
    count in the family size). Returns the step-down adjusted p-values: the i-th smallest of m
    is multiplied by (m - i), made monotone, and capped at 1. Controls the family-wise error
    rate without assuming independence between the tests.
    """
    finite = [(i, float(p)) for i, p in enumerate(p_values)
              if p is not None and math.isfinite(float(p))]
    out = [math.nan] * len(p_values)
    m = len(finite)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(finite, key=lambda t: t[1])):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def detectable_difference(p: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest difference of two accuracies near ``p`` that a two-sided two-proportion
    test on ``n`` independent items per arm detects with probability ``power`` at ``alpha``
    (normal approximation). Pairing the arms on the same items can only lower it.

    Raises:
        ValueError: p outside (0, 1), n < 1, alpha or power outside (0, 1).
    """
    if not 0 < p < 1 or n < 1:
        raise ValueError(f"need 0 < p < 1 and n >= 1; got {p}, {n}")
    return float(_power_z(alpha, power) * math.sqrt(2 * p * (1 - p) / n))


def _power_z(alpha: float, power: float) -> float:
    """z_(1 - alpha/2) + z_power, the normal quantiles of a two-sided test's power formula."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"need 0 < alpha, power < 1; got {alpha}, {power}")
    return float(_st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power))


def required_items(p: float, difference: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Items per arm for `detectable_difference` to reach ``difference`` (the inverse).

    Raises:
        ValueError: as `detectable_difference`, or a difference that is not > 0.
    """
    if not difference > 0 or not 0 < p < 1:
        raise ValueError(f"need difference > 0 and 0 < p < 1; got {difference}, {p}")
    return int(math.ceil(2 * p * (1 - p) * (_power_z(alpha, power) / difference) ** 2))
