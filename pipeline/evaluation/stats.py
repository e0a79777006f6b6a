"""Uncertainty for benchmark numbers: Wilson intervals and mean ± std over seeds.

Every reported proportion carries its sample count and a 95% interval. Wilson's score
interval is used instead of the normal approximation because our subsets are small
(tens of questions) and scores can sit near 0 or 1, where ``p ± 1.96 sqrt(p(1-p)/n)``
leaves [0, 1] or collapses to zero width.
"""

from __future__ import annotations

import math
from typing import Sequence

from pipeline.core.errors import PipelineError

Z95 = 1.959963984540054  # two-sided 95% standard-normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` (fractions in [0, 1])."""
    if n <= 0:
        raise PipelineError("a score was computed on 0 samples",
                            "check the evaluation split and the evaluation limits in params.yaml")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At p = 0 or 1 the bound is exactly 0 or 1; floating point lands a hair off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def proportion(successes: int, n: int, name: str) -> dict[str, float | int]:
    """``{name, name_ci95_low, name_ci95_high, name_correct}`` in percent, plus the count."""
    low, high = wilson_interval(successes, n)
    return {
        name: round(100.0 * successes / n, 2),
        f"{name}_ci95_low": round(100.0 * low, 2),
        f"{name}_ci95_high": round(100.0 * high, 2),
        f"{name}_correct": int(successes),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var)


def paired_bootstrap(num_a: Sequence[float], num_b: Sequence[float], den: Sequence[float],
                     n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Difference of two ratio means measured on the same items, with a percentile interval.

    The statistic is sum(num_b)/sum(den) - sum(num_a)/sum(den): e.g. per validation example,
    num = summed KL over its positions and den = its number of positions, so each model's
    statistic is the position-weighted mean KL. Items (examples), not positions, are
    resampled, since positions of one example are correlated; both models are resampled
    together, which is what makes the comparison paired. Returns the point difference, the
    interval, and the bootstrap probability that the difference has the other sign (a
    one-sided p-value's stand-in, for "significant" in tables only with the interval).
    """
    import numpy as np

    a, b, d = (np.asarray(x, dtype=np.float64) for x in (num_a, num_b, den))
    if not (a.shape == b.shape == d.shape) or a.ndim != 1:
        raise ValueError(f"paired_bootstrap needs three equal-length vectors, got {a.shape}, {b.shape}, {d.shape}")
    if len(a) == 0 or d.sum() <= 0:
        raise PipelineError("a paired comparison has no items (or no positions)",
                            "check the validation split: it needs examples with supervised positions")
    point = float(b.sum() / d.sum() - a.sum() / d.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    dens = d[idx].sum(1)
    ok = dens > 0
    diffs = (b[idx].sum(1)[ok] - a[idx].sum(1)[ok]) / dens[ok]
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    other_sign = float((diffs >= 0).mean() if point < 0 else (diffs <= 0).mean())
    return {"diff": point, "ci_low": float(low), "ci_high": float(high), "n_items": int(len(a)),
            "p_other_sign": other_sign}
