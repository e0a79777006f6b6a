"""Reading a task's splits: the JSONL records as they are, against the `datasets` library.

    python -m benchmarks.split_loading [--tasks-dir data/tasks] [--task gsm8k] [--repeats 20]

Every model stage reads its splits once (extract, attribute: the transfer, validation and
attribution splits) and tokenises the records one by one. Measured within one run, per
read of all four splits of the task:

1. plain: ``pipeline.core.data.read_jsonl``, the records as the data stage wrote them;
2. ``datasets.Dataset.from_list`` over the same records, iterated (what ``load_split``
   did), plus the library's import in a fresh interpreter (paid once per stage process);
3. ``datasets.load_dataset("json", ...)``, letting the library read the files (it writes
   an Arrow cache on the first read, a temporary one here), iterated.

Without the task's splits under --tasks-dir the tiny toy task is built into a temporary
directory. One run, best of --repeats per variant; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.timed_run import best_of
from pipeline.core.data import SPLITS, read_jsonl, write_jsonl
from pipeline.tasks import builder


def import_seconds(module: str, repeats: int = 3) -> float:
    """Wall time of ``import module`` in a fresh interpreter, less an empty interpreter's."""
    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    return min(run(f"import {module}") for _ in range(repeats)) - min(run("pass") for _ in range(repeats))


def toy_splits(root: Path) -> Path:
    sizes = {"attribution": 4, "transfer": 40, "validation": 24, "evaluation": 32}
    for name, records in builder("toy")(sizes, 0).splits.items():
        write_jsonl(root / "toy" / f"{name}.jsonl", records)
    return root / "toy"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks-dir", default="data/tasks")
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        task_dir = Path(args.tasks_dir) / args.task
        if not all((task_dir / f"{s}.jsonl").is_file() for s in SPLITS):
            print(f"no splits under {task_dir}: using the toy task")
            task_dir = toy_splits(Path(tmp) / "tasks")
        files = [task_dir / f"{s}.jsonl" for s in SPLITS]
        n = sum(len(read_jsonl(f)) for f in files)

        def plain() -> int:
            return sum(len(r["messages"]) for f in files for r in read_jsonl(f))

        t_plain = best_of(plain, args.repeats)
        print(f"{task_dir.name}: {n} records in {len(files)} splits; best of {args.repeats}")
        print(f"plain read_jsonl:               {t_plain * 1e3:8.2f} ms")
        try:
            from datasets import Dataset, disable_progress_bars, load_dataset
        except ImportError:
            print("datasets is not installed (the pipeline does not need it): pip install datasets to compare")
            return
        disable_progress_bars()

        def from_list() -> int:
            return sum(len(r["messages"]) for f in files
                       for r in Dataset.from_list([{**x, "meta": json.dumps(x.get("meta", {}))} for x in read_jsonl(f)]))

        cache = Path(tmp) / "hf-cache"

        def json_loader() -> int:
            data = load_dataset("json", data_files={f.stem: str(f) for f in files}, cache_dir=str(cache))
            return sum(len(r["messages"]) for split in data.values() for r in split)

        t_list = best_of(from_list, args.repeats)
        t_json = best_of(json_loader, max(3, args.repeats // 4))
        t_import = import_seconds("datasets")

    print(f"datasets.Dataset.from_list:     {t_list * 1e3:8.2f} ms  ({t_list / t_plain:.1f}x plain)")
    print(f"datasets.load_dataset('json'):  {t_json * 1e3:8.2f} ms  ({t_json / t_plain:.1f}x plain, cache warm)")
    print(f"import datasets (fresh process): {t_import * 1e3:7.0f} ms  (every stage process pays it once)")
    print(f"per stage process, from_list path with its import: {(t_list + t_import) / t_plain:.0f}x the plain read")


if __name__ == "__main__":
    main()
