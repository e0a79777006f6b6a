"""Paired benchmark statistics against hand-computed cases: exact McNemar, Newcombe's paired
interval, exact power and the smallest detectable difference."""

from __future__ import annotations

import pytest

from pipeline.evaluation.paired import (compare, connor_difference, critical_count, detectable_difference, mcnemar_exact,
                                       mcnemar_power, newcombe_interval, required_items)


def test_mcnemar_exact_by_hand():
    """p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2):
    b=1, c=9: 2 (1 + 10) / 1024; b=2, c=8: 2 (1 + 10 + 45) / 1024; b=0, c=5: 2 / 32; b=c=3: 1.
    Rejects the one-sided p (half), the chi-square approximation with continuity correction
    ((|1 - 9| - 1)^2 / 10 = 4.9, p = 0.027) and a mid-p variant."""
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024, rel=1e-12)
    assert mcnemar_exact(0, 5) == pytest.approx(1 / 16, rel=1e-12)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 3000) > 0 or mcnemar_exact(0, 3000) == 0.0  # no overflow on large counts


def test_newcombe_interval_by_hand():
    """Both right 5, model only 3, target only 1, neither 1 (n = 10): p_model = 0.8, p_target = 0.6.
    Wilson intervals (0.49016, 0.94332) and (0.31267, 0.83182); phi = (5*1 - 3*1) / sqrt(8*2*6*4)
    = 0.10206; lower = 0.2 - sqrt(0.30984^2 - 2 phi 0.30984 * 0.23182 + 0.23182^2) = -0.16753,
    upper = 0.2 + sqrt(0.14332^2 - 2 phi 0.14332 * 0.28733 + 0.28733^2) = 0.50772.
    Rejects phi = 0 (the unpaired interval), a swapped margin (-0.5077, 0.1675) and Wald."""
    low, high = newcombe_interval(5, 3, 1, 1)
    assert low == pytest.approx(-0.167530, abs=1e-5) and high == pytest.approx(0.507719, abs=1e-5)
    assert newcombe_interval(5, 1, 3, 1) == pytest.approx((-high, -low), abs=1e-12)
    assert newcombe_interval(10, 0, 0, 0) == pytest.approx(newcombe_interval(0, 0, 0, 10))  # symmetric, around 0
    lo, hi = newcombe_interval(0, 10, 0, 0)
    assert 0.6 < lo < 0.61 and hi == 1.0  # all ten gained: bounded by 1


def test_compare_counts_discordant_items_in_order():
    """Rejects counting model-only items as target-only (the sign of the difference) and unpaired
    counting. 7 model-only against 1 target-only: p = 2 * 9 / 256 = 0.07, not significant,
    although Newcombe's interval excludes 0: the verdict is the (conservative) exact test's."""
    target = [True, True, False, False, True, False, False, False, False, False]
    model = [True, False, True, True, True, True, True, True, True, True]
    r = compare(target, model)
    assert (r.n, r.both, r.model_only, r.target_only, r.neither) == (10, 2, 7, 1, 0)
    assert r.diff == pytest.approx(0.6) and r.p == pytest.approx(2 * 9 / 256)
    assert not r.significant and 0 < r.ci_low < 0.6 < r.ci_high
    gained = compare([True] + [False] * 9, [True] * 9 + [False])  # 8 model-only, 0 target-only
    assert gained.p == pytest.approx(2 / 256) and gained.significant and gained.diff == pytest.approx(0.8)
    assert not compare([True, False] * 5, [False, True] * 5).significant  # 5 vs 5 discordant
    with pytest.raises(ValueError):
        compare([True], [True, False])


def test_exact_power_by_hand():
    """n = 10, every item discordant, the model alone right with probability 0.9: the test rejects
    iff min(b, c) <= 1 (p(1, 9) = 0.021, p(2, 8) = 0.109), so power = P(X >= 9) + P(X <= 1),
    X ~ Binomial(10, 0.9) = 0.9^10 + 10 * 0.9^9 * 0.1 + (tiny) = 0.73610. Rejects a critical
    region that uses p < alpha / 2 per tail wrongly (k = 0: 0.349) or the normal approximation."""
    assert critical_count(5) == -1 and critical_count(6) == 0 and critical_count(10) == 1
    tiny = 0.1 ** 10 + 10 * 0.1 ** 9 * 0.9
    assert mcnemar_power(10, 0.9, 0.1) == pytest.approx(0.9 ** 10 + 10 * 0.9 ** 9 * 0.1 + tiny, rel=1e-9)
    assert mcnemar_power(10, 0.05, 0.05) < 0.05  # under the null: at most alpha


def test_detectable_difference():
    """At the returned difference the power reaches 80 % and a point less does not; larger n
    detects smaller differences; for large n it agrees with Connor's normal approximation
    within 5 %; n = 20 with 30 % discordance detects nothing (at most 6 discordant items)."""
    d = detectable_difference(500, 0.2)
    assert mcnemar_power(500, (0.2 + d) / 2, (0.2 - d) / 2) >= 0.8
    assert mcnemar_power(500, (0.2 + d - 0.01) / 2, (0.2 - d + 0.01) / 2) < 0.8
    assert detectable_difference(2000, 0.2) < d < detectable_difference(100, 0.2)
    assert d == pytest.approx(connor_difference(500, 0.2), rel=0.05)
    assert detectable_difference(20, 0.3) is None


def test_required_items_reach_the_power():
    """The n returned for a 10-point difference at 20 % discordance reaches 80 % power and n - 1
    does not; it detects about 10 points (detectable_difference at that n)."""
    n = required_items(0.10, 0.20)
    assert mcnemar_power(n, 0.15, 0.05) >= 0.8 > mcnemar_power(n - 1, 0.15, 0.05)
    assert detectable_difference(n, 0.20) == pytest.approx(0.10, abs=0.01)
