"""How stage scripts run: clean user errors, and a closing line with wall time and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from typing import Callable

from pipeline.errors import PipelineError


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def guarded(name: str, main: Callable[[], object]) -> int:
    """Run ``main``; a user error prints its problem and fix and gives exit status 2."""
    start = time.perf_counter()
    try:
        main()
    except PipelineError as exc:
        print(f"[{name}] error: {exc}", file=sys.stderr)
        return 2
    print(f"[{name}] done in {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mb():.0f} MB", file=sys.stderr)
    return 0


def run_stage(name: str, main: Callable[[], object]) -> None:
    status = guarded(name, main)
    if status:
        sys.exit(status)
