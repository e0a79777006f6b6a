"""How stage scripts run: clean user errors, a closing line with wall time and peak memory,
and, for the stages a transfer method consists of, a cost record the results table sums.

Cost records live in ``metrics/cost/<stage>/<item>.json`` (see ``layout.cost_file``), outside
the stage's artifact, so a re-run that reproduces an artifact bit for bit does not change the
hash downstream stages depend on. Wall time is the stage's work (after Python start-up and
imports, as the baselines' own cost.json); peak memory is the process high-water mark.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable

from pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class CostTag:
    """Which method a stage belongs to, for the cost columns of the results table."""

    method: str  # "semalign", a baseline's name, or "extract" (the source pass several methods read)
    task: str | None = None  # None: shared by every task (align)
    seed: int | None = None  # None: shared by every seed (extraction, attribution, pairing, ...)


def is_main_process() -> bool:
    """Rank 0 of a data-parallel group (pipeline.compute.launch), or the only process: the one that
    reports and records the stage. No torch needed to ask."""
    return os.environ.get("RANK", "0") == "0"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def guarded(name: str, main: Callable[[], object], cost: CostTag | None = None) -> int:
    """Run ``main``; a user error prints its problem and fix and gives exit status 2."""
    start = time.perf_counter()
    try:
        main()
    except PipelineError as exc:
        print(f"[{name}] error: {exc}", file=sys.stderr)
        return 2
    wall, peak = time.perf_counter() - start, peak_rss_mb()
    if not is_main_process():
        return 0  # under several processes the main one (rank 0) reports and records the stage
    if cost is not None:
        write_cost(name, cost, wall, peak)
    print(f"[{name}] done in {wall:.1f} s, peak RSS {peak:.0f} MB", file=sys.stderr)
    return 0


def write_cost(name: str, tag: CostTag, wall_s: float, peak_mb: float) -> None:
    from pipeline.core.artifacts import write_json
    from pipeline.core.layout import cost_file

    write_json(cost_file(name), {"stage": name, "method": tag.method, "task": tag.task, "seed": tag.seed,
                                 "wall_s": round(wall_s, 3), "peak_rss_mb": round(peak_mb, 1)})


def run_stage(name: str, main: Callable[[], object], cost: CostTag | None = None) -> None:
    status = guarded(name, main, cost)
    if status:
        sys.exit(status)
