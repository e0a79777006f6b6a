"""Run a command (by default the README's main command) and time every DVC stage in it.

    python -m benchmarks.timed_run [--log run.log] [--json stages.json] [-- make run]

Each output line is stamped with the seconds since start and copied to the log. At the end
it prints, per stage: the wall time from DVC's "Running stage" line to the next stage (so
Python start-up, imports and DVC's own bookkeeping count), the stage's work time and its
process's peak resident memory (from the "[stage] done in ..." line every stage prints),
then the set-up before the first stage, the total wall time and the peak resident memory of
the largest process the command ran. One run, one machine: the numbers to quote in a note.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

RUNNING = re.compile(r"Running stage '(?P<stage>[^']+)'")
DONE = re.compile(r"\[(?P<stage>[^\]]+)\] done in (?P<work>[\d.]+) s, peak RSS (?P<rss>\d+) MB")


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn``, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stage_rows(lines: list[tuple[float, str]], end: float) -> list[dict]:
    """Stages in run order, with wall (start-up included), work and peak RSS where printed.

    A stage's wall time runs from the end of the previous stage (its "done" line, which the
    stage process prints unbuffered) to its own "done" line, so DVC's bookkeeping between
    stages counts towards the stage that follows it.
    """
    rows: list[dict] = []
    last_end = None
    for t, line in lines:
        m = RUNNING.search(line)
        if m:
            if rows and "end_s" not in rows[-1]:
                rows[-1]["end_s"] = t
            rows.append({"stage": m["stage"], "start_s": round(t if last_end is None else last_end, 1)})
            continue
        d = DONE.search(line)
        if d and rows:
            rows[-1].update(work_s=float(d["work"]), peak_rss_mb=int(d["rss"]), end_s=t)
            last_end = t
    for r in rows:
        r["wall_s"] = round(r.pop("end_s", end) - r["start_s"], 1)
    return rows


def by_kind(rows: list[dict]) -> list[dict]:
    """Stages grouped by name before the ``@`` (all 96 frontier stages in one row), with what
    each kind pays besides its work: overhead = wall - work (interpreter, imports, device
    start-up, model loading before the work's clock starts, DVC's bookkeeping)."""
    groups: dict[str, dict] = {}
    for r in rows:
        g = groups.setdefault(r["stage"].split("@")[0], {"kind": r["stage"].split("@")[0], "stages": 0,
                                                         "wall_s": 0.0, "work_s": 0.0, "peak_rss_mb": 0})
        g["stages"] += 1
        g["wall_s"] = round(g["wall_s"] + r["wall_s"], 1)
        g["work_s"] = round(g["work_s"] + r.get("work_s", 0.0), 1)
        g["peak_rss_mb"] = max(g["peak_rss_mb"], r.get("peak_rss_mb", 0))
    for g in groups.values():
        g["overhead_s"] = round(g["wall_s"] - g["work_s"], 1)
        g["overhead_share"] = round(g["overhead_s"] / g["wall_s"], 3) if g["wall_s"] else 0.0
    return list(groups.values())


def run(cmd: list[str], log: Path) -> tuple[list[tuple[float, str]], float, int]:
    start = time.monotonic()
    lines = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # DVC's own lines arrive when printed, not in bursts
    with log.open("w") as out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                                text=True, bufsize=1, errors="replace") as proc:
        for line in proc.stdout:
            t = time.monotonic() - start
            lines.append((t, line))
            out.write(f"{t:8.1f} {line}")
            sys.stdout.write(line)
    return lines, time.monotonic() - start, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", type=Path, default=Path("timed_run.log"))
    ap.add_argument("--json", type=Path, help="also write the per-stage table as JSON")
    ap.add_argument("cmd", nargs="*", default=["make", "run"])
    args = ap.parse_args()
    lines, total, status = run(args.cmd or ["make", "run"], args.log)
    rows = stage_rows(lines, total)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    print(f"\n{'stage':42s} {'wall s':>8s} {'work s':>8s} {'peak MB':>8s}")
    for r in rows:
        print(f"{r['stage']:42s} {r['wall_s']:8.1f} {r.get('work_s', float('nan')):8.1f} {r.get('peak_rss_mb', 0):8d}")
    kinds = by_kind(rows)
    print(f"\n{'kind':24s} {'stages':>6s} {'wall s':>8s} {'work s':>8s} {'overhead s':>10s} {'share':>6s} "
          f"{'peak MB':>8s}")
    for g in kinds:
        print(f"{g['kind']:24s} {g['stages']:6d} {g['wall_s']:8.1f} {g['work_s']:8.1f} {g['overhead_s']:10.1f} "
              f"{g['overhead_share']:6.0%} {g['peak_rss_mb']:8d}")
    wall, work = sum(g["wall_s"] for g in kinds), sum(g["work_s"] for g in kinds)
    if wall:
        print(f"all stages: wall {wall:.1f} s, work {work:.1f} s, overhead {wall - work:.1f} s "
              f"({(wall - work) / wall:.0%} of the stages' wall)")
    setup = rows[0]["start_s"] if rows else total
    print(f"\nset-up before the first stage: {setup / 60:.1f} min; stages: {len(rows)}; "
          f"total: {total / 60:.1f} min; largest process peak RSS: {peak_gb:.1f} GiB; exit status {status}")
    if args.json:
        args.json.write_text(json.dumps({"command": args.cmd, "exit_status": status, "total_s": round(total, 1),
                                         "setup_s": round(setup, 1), "peak_rss_gib": round(peak_gb, 2),
                                         "kinds": kinds, "stages": rows}, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
