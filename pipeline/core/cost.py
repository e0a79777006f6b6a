"""What a method costs: wall time and peak resident memory, measured in the same run.

Peak RSS is the process high-water mark (``VmHWM``). On Linux it is reset at the start of a
measurement (``/proc/self/clear_refs``), so several measurements in one process (tests, a
benchmark script) each report their own peak; where the reset is not allowed the number is
the process peak so far, and ``peak_rss_scope`` says so.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Cost:
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    peak_rss_scope: str = "measurement"  # or "process" when the high-water mark could not be reset
    phases: dict[str, float] = field(default_factory=dict)  # seconds per named phase

    @property
    def peak_rss_gib(self) -> float:
        return self.peak_rss_bytes / 2**30

    def record(self) -> dict:
        out = asdict(self)
        out["peak_rss_gib"] = round(self.peak_rss_gib, 4)
        out["wall_s"] = round(self.wall_s, 3)
        return out

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent in the block to ``phases[name]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - start, 3)


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets the peak RSS counter (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


@contextlib.contextmanager
def measure() -> Iterator[Cost]:
    """Measure the enclosed block; the yielded :class:`Cost` is filled in on exit."""
    cost = Cost(peak_rss_scope="measurement" if _reset_peak() else "process")
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.wall_s = time.perf_counter() - start
        cost.peak_rss_bytes = _peak_rss()
