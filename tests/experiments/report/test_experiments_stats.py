"""Summary statistics and paired tests on inputs whose answers are known by hand."""

from __future__ import annotations

import math

import pytest

from dipnet.experiments.report.stats import (confidence_interval, format_mean_std, format_p,
                                             format_paired_p, is_significant, low_power_note,
                                             paired_test, summarize, wilcoxon_floor)


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


# --- issue 9 item 4: round-off must never look like significance ---------------------------
def test_roundoff_constant_difference_is_degenerate_not_significant():
    # differences 0.2 and 0.2000000001: constant up to round-off; scipy's t-test gives ~1e-10
    t = paired_test([0.9, 0.8], [0.7, 0.5999999999])
    assert t.degenerate and t.n == 2
    assert math.isnan(t.t_p) and math.isnan(t.t_stat) and math.isnan(t.wilcoxon_p)
    assert not t.significant
    assert format_paired_p(t) == "n/a (constant difference)"
    # the same with three pairs, and with the float-exact 0.9-0.7 vs 0.8-0.6 (5.6e-17 apart)
    t3 = paired_test([0.9, 0.8, 0.7], [0.7, 0.5999999999, 0.5])
    assert t3.degenerate and math.isnan(t3.t_p) and not t3.significant
    tf = paired_test([0.9, 0.8, 0.7], [0.7, 0.6, 0.5])
    assert tf.degenerate and math.isnan(tf.t_p)
    # the tolerance is relative: a constant difference of 1e6 with round-off is degenerate too
    big = paired_test([1e6 + 0.1 + 0.2, 2e6 + 0.3], [0.3, 1e6 + 0.3])
    assert big.degenerate
    # the interval of a constant difference is that difference (zero width), not NaN
    assert t.ci_low == pytest.approx(0.2) and t.ci_high == pytest.approx(0.2)


def test_roundoff_zero_pairs_are_zeros_for_wilcoxon():
    # 0.1 + 0.2 - 0.3 = 5.6e-17 is a zero difference, not the smallest positive rank
    noisy = paired_test([0.1 + 0.2, 0.6, 0.9, 0.75], [0.3, 0.5, 0.7, 0.6])
    exact = paired_test([0.3, 0.6, 0.9, 0.75], [0.3, 0.5, 0.7, 0.6])
    assert noisy.wilcoxon_p == pytest.approx(exact.wilcoxon_p)


def test_never_star_with_fewer_than_three_pairs():
    # diffs 1.0 and 1.01: t = 201 with 1 df, p = 0.003 < 0.05, yet two pairs prove nothing
    t = paired_test([1.0, 1.01], [0.0, 0.0])
    assert t.t_p < 0.05 and not t.degenerate
    assert not t.significant
    assert not is_significant(0.003, 2) and is_significant(0.003, 3)
    # exact Wilcoxon floor with n pairs is 2 / 2^n: 0.5 at n=2
    assert t.wilcoxon_p == pytest.approx(0.5)


def test_wilcoxon_floor_matches_the_note():
    for n in (2, 3, 4, 5, 6):
        t = paired_test([1.0 + 0.1 * i for i in range(n)], [0.0] * n)
        assert t.wilcoxon_p == pytest.approx(2 / 2 ** n) == pytest.approx(wilcoxon_floor(n))
    note = low_power_note(2)
    assert "0.5" in note and "2 seeds" in note and "0.25" not in note
    assert "0.25" in low_power_note(3) and "3 seeds" in low_power_note(3)


def test_real_difference_with_enough_pairs_is_still_starred():
    base = [0.80, 0.82, 0.79, 0.81, 0.83, 0.80]
    diffs = [0.020, 0.025, 0.018, 0.030, 0.022, 0.027]
    t = paired_test([b + d for b, d in zip(base, diffs)], base)
    assert not t.degenerate and t.n == 6
    assert t.t_p < 1e-4 and t.significant
    assert t.wilcoxon_p == pytest.approx(2 / 2 ** 6)  # all positive: the exact floor, < 0.05
    assert format_paired_p(t).endswith("*")


def test_paired_test_confidence_interval_of_mean_difference():
    # differences 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.302652730 (tables)
    t = paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = 4.302652730 / math.sqrt(3)
    assert (t.ci_low, t.ci_high) == pytest.approx((2 - half, 2 + half), rel=1e-8)
    d = t.to_dict()
    assert {"ci_low", "ci_high", "degenerate", "significant"} <= set(d)
    one = paired_test([1.0], [0.0])
    assert math.isnan(one.ci_low) and math.isnan(one.ci_high) and not one.significant


def test_holm_matches_hand_computed_step_down_values():
    from dipnet.experiments.report.stats import holm

    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.5, None, float("nan"), 0.2])  # untestable entries stay NaN, family of 2
    assert out[0] == pytest.approx(0.5) and out[3] == pytest.approx(0.4)
    assert math.isnan(out[1]) and math.isnan(out[2])
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1


def test_power_helpers_invert_each_other_and_match_the_textbook_case():
    from dipnet.experiments.report.stats import detectable_difference, required_items

    # textbook: p 0.5, 3 points, alpha 0.05, power 0.8 -> 2 * 0.25 * (2.8016 / 0.03)^2 = 4361
    assert required_items(0.5, 0.03) == 4361
    assert detectable_difference(0.5, 4361) == pytest.approx(0.03, rel=1e-3)
    assert detectable_difference(0.14, 50) == pytest.approx(0.1944, abs=5e-4)
    with pytest.raises(ValueError):
        detectable_difference(1.2, 10)


def test_a_constant_difference_of_float32_accuracies_is_not_a_test():
    """Accuracies are float32 fractions written as float64: three seeds that each differ by
    exactly 4 of 200 points differ by -0.01999998, -0.02000004, -0.02000004 once read back.
    That is round-off, not spread (the dose-response study once starred it with p 1e-5)."""
    import numpy as np

    from dipnet.experiments.report.stats import paired_test

    a = [float(np.float32(v)) for v in (0.51, 0.515, 0.52)]
    b = [float(np.float32(v)) for v in (0.53, 0.535, 0.54)]
    t = paired_test(a, b)
    assert t.degenerate and math.isnan(t.t_p)
    assert t.mean_diff == pytest.approx(-0.02, abs=1e-6)
    # a real spread of one point in 200 is still tested
    c = [float(np.float32(v)) for v in (0.53, 0.54, 0.54)]
    assert not paired_test(a, c).degenerate
