"""Layer pairing: exactly one source layer per target layer, shallow to deep.

All maps are 1-based lists ``pairs[k - 1] = source layer for target block k``; the
``interpolate`` strategy adds a (a, b, lambda) triple per target block instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pipeline.core.errors import PipelineError

STRATEGIES = ("attributed", "floor", "critical", "interpolate")


def base_map(n_source: int, n_target: int) -> list[int]:
    """base(k) = max(1, floor(L_s / L_t * k)) for k = 1..L_t (exact integer arithmetic)."""
    if n_source < 1 or n_target < 1:
        raise PipelineError(f"layer counts must be positive (got {n_source}, {n_target})", "check the models")
    return [max(1, (n_source * k) // n_target) for k in range(1, n_target + 1)]


def attributed_map(scores: list[float], n_target: int) -> list[int]:
    """In each window (base(k-1), base(k)] take the highest-scoring source layer."""
    n_source = len(scores)
    base = base_map(n_source, n_target)
    pairs, lo = [], 0
    for k in range(n_target):
        window = range(lo + 1, base[k] + 1)
        pairs.append(max(window, key=lambda l: scores[l - 1]) if len(window) else base[k])
        lo = max(lo, base[k])
    return pairs


def critical_layers(scores: list[float], n: int) -> list[int]:
    """The n highest-scoring source layers (1-based), best first; ties go to the shallower layer.

    The one ranking of "critical" layers: the attribute stage reports it and the ``critical``
    strategy moves these layers, so the two cannot disagree. Signed score, as "highest-scoring"
    in method.md and the windows of :func:`attributed_map` read it (identical to |score| for the
    non-negative aggregates ``frobenius`` and ``abs_sum``).
    """
    return sorted(range(1, len(scores) + 1), key=lambda l: -scores[l - 1])[:n]


def critical_map(scores: list[float], n_target: int, n_critical: int) -> list[int]:
    """v1: the floor map, then each unpaired critical layer l* moves to k' = min{k: base(k) >= l*}."""
    n_source = len(scores)
    base = base_map(n_source, n_target)
    pairs = list(base)
    for l_star in critical_layers(scores, n_critical):
        if l_star in pairs:
            continue
        k = next((k for k in range(1, n_target + 1) if base[k - 1] >= l_star), n_target)
        pairs[k - 1] = l_star
    return pairs


@dataclass(frozen=True)
class Interp:
    a: int
    b: int
    lam: float


def interpolate_map(n_source: int, n_target: int) -> list[Interp]:
    """v1: u = L_s k / L_t, a = max(1, min(floor(u), L_s - 1)), b = a + 1, lambda = clip(u - a)."""
    if n_source < 2:
        raise PipelineError("interpolation needs a source with at least 2 layers", "use pairing.strategy: floor")
    out = []
    for k in range(1, n_target + 1):
        u = n_source * k / n_target
        a = max(1, min(math.floor(u), n_source - 1))
        out.append(Interp(a, a + 1, min(1.0, max(0.0, u - a))))
    return out


def pair_layers(strategy: str, n_source: int, n_target: int, scores: list[float] | None = None,
                n_critical: int = 1) -> dict:
    """The pairing record the later stages read (JSON-serialisable)."""
    if strategy not in STRATEGIES:
        raise PipelineError(f"unknown pairing strategy {strategy!r}", f"set pairing.strategy to one of {STRATEGIES}")
    if strategy in ("attributed", "critical"):
        if scores is None or len(scores) != n_source:
            raise PipelineError(
                f"strategy {strategy!r} needs one attribution score per source layer "
                f"({n_source}), got {None if scores is None else len(scores)}",
                "re-run the attribution stage for this source model",
            )
    if strategy == "interpolate":
        interp = interpolate_map(n_source, n_target)
        record = {"strategy": strategy, "pairs": [i.b if i.lam >= 0.5 else i.a for i in interp],
                  "interp": [asdict(i) for i in interp]}
    elif strategy == "floor":
        record = {"strategy": strategy, "pairs": base_map(n_source, n_target)}
    elif strategy == "attributed":
        record = {"strategy": strategy, "pairs": attributed_map(scores, n_target)}
    else:
        record = {"strategy": strategy, "pairs": critical_map(scores, n_target, n_critical)}
    record.update(n_source=n_source, n_target=n_target)
    validate_pairing(record)
    return record


def validate_pairing(record: dict) -> None:
    """One source layer per target layer, inside the source, in non-decreasing order."""
    pairs, n_s, n_t = record.get("pairs"), record.get("n_source"), record.get("n_target")
    problem = None
    if not isinstance(pairs, list) or len(pairs) != n_t:
        problem = f"pairing has {None if not isinstance(pairs, list) else len(pairs)} entries for {n_t} target layers"
    elif any(not (1 <= int(p) <= n_s) for p in pairs):
        problem = f"pairing names a source layer outside 1..{n_s}: {pairs}"
    elif any(b < a for a, b in zip(pairs, pairs[1:])):
        problem = f"pairing is not shallow-to-deep (order-preserving): {pairs}"
    if problem:
        raise PipelineError(problem, "re-run the pairing stage (`dvc repro pair`) for this model pair")
