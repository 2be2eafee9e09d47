"""Summary statistics and paired tests on inputs whose answers are known by hand."""

from __future__ import annotations

import math

import pytest

from dipnet.experiments.stats import (confidence_interval, format_mean_std, format_p,
                                      paired_test, summarize)


def test_summarize_known_values():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s.n == 4 and s.mean == 2.5
    # sample std (ddof=1) of 1..4 is sqrt(5/3)
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    assert s.sem == pytest.approx(math.sqrt(5 / 3) / 2)
    # t_{0.975, 3} = 3.182446305 (tables)
    half = 3.182446305 * math.sqrt(5 / 3) / 2
    assert (s.ci_low, s.ci_high) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-8)


def test_summarize_drops_missing_and_handles_tiny_inputs():
    s = summarize([1.0, None, float("nan"), 3.0])
    assert s.n == 2 and s.mean == 2.0 and s.std == pytest.approx(math.sqrt(2))
    one = summarize([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.std)
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean)
    assert confidence_interval([5.0, 5.0, 5.0]) == (5.0, 5.0)
    with pytest.raises(ValueError):
        confidence_interval([1.0, 2.0], level=1.5)


def test_paired_test_known_values():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1/sqrt(3)) = 3.4641, df = 2
    t = paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert t.n == 3 and t.mean_diff == 2.0 and t.std_diff == pytest.approx(1.0)
    assert t.t_stat == pytest.approx(2 * math.sqrt(3))
    # two-sided p for t=3.4641 with 2 df: 1 - 3.4641/sqrt(2 + 12) = 0.074180
    assert t.t_p == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), rel=1e-6)
    # exact Wilcoxon with n=3, all differences positive: p = 2 / 2^3 = 0.25, the floor at n=3
    assert t.wilcoxon_p == pytest.approx(0.25)


def test_paired_test_direction_pairs_and_degenerate_cases():
    t = paired_test([0.5, 0.6, 0.7], [0.6, 0.8, 0.9])
    assert t.mean_diff == pytest.approx(-1 / 6) and t.t_stat < 0
    # a pair with a missing value is dropped, not counted as zero
    assert paired_test([1.0, None, 3.0], [0.0, 1.0, 1.0]).n == 2
    same = paired_test([1.0, 2.0], [1.0, 2.0])
    assert same.mean_diff == 0 and math.isnan(same.t_p) and math.isnan(same.wilcoxon_p)
    with pytest.raises(ValueError):
        paired_test([1.0], [1.0, 2.0])


def test_formatting():
    assert format_mean_std(summarize([0.8, 0.9]), 100) == "85.00 ± 7.07"
    assert format_mean_std(summarize([0.8]), 100) == "80.00"
    assert format_mean_std(summarize([])) == "-"
    assert format_p(0.0004) == "<0.001" and format_p(float("nan")) == "-"
    assert format_p(0.0432) == "0.043"
