"""Two models scored right/wrong on the same benchmark items: paired test, interval, power.

A model's benchmark score is compared with the untouched target's on the same questions, so
only the discordant items carry information: ``b`` items the target gets right and the model
wrong, ``c`` the reverse. The difference in accuracy is (c - b) / n.

- Test: exact McNemar, i.e. the two-sided exact binomial test of b against Binomial(b + c, 1/2)
  (p = min(1, 2 P(X <= min(b, c)))); exact because our n are small.
- Interval: Newcombe's (1998) hybrid score interval for a paired difference of proportions
  (his method 10: Wilson intervals of both margins, combined with the margins' correlation phi),
  which keeps its coverage at small n and near 0 or 1, where a Wald interval does not.
  The verdict ("significant" or not) is the test's; at the 0.05 boundary the two may disagree.
- Power: the exact power of that test, and the smallest difference a given n detects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.evaluation.stats import Z95, wilson_interval

ALPHA = 0.05


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for discordant counts ``b`` and ``c``."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** m)  # exact integers: no underflow until the final division


def newcombe_interval(both: int, model_only: int, target_only: int, neither: int,
                      z: float = Z95) -> tuple[float, float]:
    """95 % interval of p_model - p_target = (model_only - target_only) / n (Newcombe 1998, method 10)."""
    n = both + model_only + target_only + neither
    if n <= 0:
        raise PipelineError("a paired comparison has no items", "check the evaluation split of this benchmark")
    p1, p2 = (both + model_only) / n, (both + target_only) / n
    l1, u1 = wilson_interval(both + model_only, n, z)
    l2, u2 = wilson_interval(both + target_only, n, z)
    margins = (both + model_only) * (target_only + neither) * (both + target_only) * (model_only + neither)
    phi = (both * neither - model_only * target_only) / math.sqrt(margins) if margins else 0.0
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


@dataclass(frozen=True)
class PairedResult:
    n: int
    both: int
    model_only: int  # items the model gets right and the target wrong
    target_only: int
    neither: int
    diff: float  # accuracy difference, model - target, as a fraction
    ci_low: float
    ci_high: float
    p: float  # exact McNemar

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def record(self) -> dict:
        return {"n": self.n, "both": self.both, "model_only": self.model_only, "target_only": self.target_only,
                "neither": self.neither, "diff": self.diff, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "p": self.p, "significant": self.significant}


def compare(target: Sequence[bool], model: Sequence[bool]) -> PairedResult:
    """Paired comparison of per-item verdicts given in the same item order."""
    if len(target) != len(model):
        raise ValueError(f"paired verdicts of different lengths: {len(target)} and {len(model)}")
    both = sum(1 for t, m in zip(target, model) if t and m)
    model_only = sum(1 for t, m in zip(target, model) if m and not t)
    target_only = sum(1 for t, m in zip(target, model) if t and not m)
    n = len(target)
    low, high = newcombe_interval(both, model_only, target_only, n - both - model_only - target_only)
    return PairedResult(n, both, model_only, target_only, n - both - model_only - target_only,
                        (model_only - target_only) / n, low, high, mcnemar_exact(target_only, model_only))


# --- power ------------------------------------------------------------------------------
def _log_factorials(n: int) -> np.ndarray:
    """log k! for k = 0..n."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])


def _binomial_pmf(m: int, q: float, logfact: np.ndarray) -> np.ndarray:
    """P(X = k), k = 0..m, for X ~ Binomial(m, q)."""
    ks = np.arange(m + 1)
    if q <= 0 or q >= 1:
        return (ks == (0 if q <= 0 else m)).astype(float)
    return np.exp(logfact[m] - logfact[ks] - logfact[m - ks] + ks * math.log(q) + (m - ks) * math.log1p(-q))


def critical_count(m: int, alpha: float = ALPHA, logfact: np.ndarray | None = None) -> int:
    """Largest k such that min(b, c) = k of m discordant items is significant (exact two-sided
    McNemar p <= alpha); -1 when even k = 0 is not (m <= 5 at alpha 0.05)."""
    if m == 0:
        return -1
    cdf = np.cumsum(_binomial_pmf(m, 0.5, _log_factorials(m) if logfact is None else logfact))
    return int(np.searchsorted(cdf, alpha / 2 * (1 + 1e-12), side="right")) - 1


def mcnemar_power(n: int, p_model_only: float, p_target_only: float, alpha: float = ALPHA) -> float:
    """Exact power of the two-sided exact McNemar test at level ``alpha`` on ``n`` items that are
    right for the model only with probability ``p_model_only`` and for the target only with
    ``p_target_only``: the discordant count m is Binomial(n, psi = their sum), and given m the
    model-only count is Binomial(m, p_model_only / psi)."""
    psi = p_model_only + p_target_only
    if min(p_model_only, p_target_only) < 0 or psi > 1 + 1e-12:
        raise ValueError(f"discordant probabilities {p_model_only}, {p_target_only} are not a distribution")
    if n < 1 or psi <= 0:
        return 0.0
    psi = min(psi, 1.0)
    logfact = _log_factorials(n)
    p_m = _binomial_pmf(n, psi, logfact)
    sd = math.sqrt(n * psi * (1 - psi))
    lo, hi = max(0, int(n * psi - 10 * sd) - 1), min(n, int(n * psi + 10 * sd) + 1)  # outside: < 1e-20
    power = 0.0
    for m in range(lo, hi + 1):
        k = critical_count(m, alpha, logfact)
        if k >= 0 and p_m[m] > 0:
            pb = _binomial_pmf(m, p_model_only / psi, logfact)
            power += float(p_m[m]) * float(pb[: k + 1].sum() + pb[m - k:].sum())
    return min(1.0, power)


def detectable_difference(n: int, discordance: float, power: float = 0.8, alpha: float = ALPHA,
                          tol: float = 1e-4) -> float | None:
    """Smallest accuracy difference |p_model - p_target| that the exact McNemar test detects
    with probability ``power`` on ``n`` items when a fraction ``discordance`` of items is
    discordant; None when even a difference of ``discordance`` (every discordant item one
    way) is not detected that often."""
    if not 0 < discordance <= 1:
        raise ValueError(f"discordance must lie in (0, 1], got {discordance}")

    def power_at(delta: float) -> float:
        return mcnemar_power(n, (discordance + delta) / 2, (discordance - delta) / 2, alpha)

    if power_at(discordance) < power:
        return None
    low, high = 0.0, discordance
    while high - low > tol:
        mid = (low + high) / 2
        low, high = (mid, high) if power_at(mid) < power else (low, mid)
    return high


def connor_difference(n: int, discordance: float, power: float = 0.8, alpha: float = ALPHA) -> float:
    """The same from Connor's (1987) normal approximation, n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2,
    solved for d by bisection (a cross-check of the exact computation for large n)."""
    from statistics import NormalDist

    za, zb = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)

    def needed(d: float) -> float:
        return (za * math.sqrt(discordance) + zb * math.sqrt(max(0.0, discordance - d * d))) ** 2 / (d * d)

    low, high = 1e-9, discordance
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if needed(mid) > n else (low, mid)
    return high


def required_items(delta: float, discordance: float, power: float = 0.8, alpha: float = ALPHA,
                   limit: int = 1_000_000) -> int | None:
    """Fewest items on which the exact McNemar test detects an accuracy difference ``delta`` with
    ``power`` at the given discordance (None above ``limit``): for sizing evaluation splits."""
    if not 0 < delta <= discordance <= 1:
        raise ValueError(f"need 0 < delta <= discordance <= 1, got {delta}, {discordance}")

    def enough(n: int) -> bool:
        return mcnemar_power(n, (discordance + delta) / 2, (discordance - delta) / 2, alpha) >= power

    high = 8
    while not enough(high):
        if high > limit:
            return None
        high *= 2
    # An exact test's power is saw-toothed in n: bisection returns an n that reaches the power
    # where n - 1 does not; a slightly smaller n may occasionally reach it too.
    low = high // 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if not enough(mid) else (low, mid)
    return high


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.evaluation.paired 20 100 1000``: what each n detects, and the n a difference needs."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("n", type=int, nargs="*", default=[20, 100, 200, 500, 1000, 2000, 14042])
    ap.add_argument("--discordance", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--delta", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--power", type=float, default=0.8)
    args = ap.parse_args(argv)
    psis = args.discordance
    print(f"smallest detectable accuracy difference (points), exact McNemar, alpha {ALPHA}, power {args.power}")
    print("| n | " + " | ".join(f"discordance {100 * p:.0f}%" for p in psis) + " |")
    print("|---|" + "---|" * len(psis))
    for n in args.n:
        cells = [detectable_difference(n, p, args.power) for p in psis]
        print(f"| {n} | " + " | ".join("none" if c is None else f"{100 * c:.1f}" for c in cells) + " |")
    print("\nitems needed")
    print("| difference | " + " | ".join(f"discordance {100 * p:.0f}%" for p in psis) + " |")
    print("|---|" + "---|" * len(psis))
    for d in args.delta:
        cells = [required_items(d, p, args.power) if d <= p else None for p in psis]
        print(f"| {100 * d:.0f} points | " + " | ".join("–" if c is None else str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
