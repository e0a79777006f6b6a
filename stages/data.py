"""Stage `data`: build one task's splits and data card.

    python stages/data.py TASK [--params params.yaml] [--out data/tasks]

Reads ``seed`` and ``tasks_config.TASK`` from params.yaml and writes
``data/tasks/TASK/{attribution,transfer,validation,evaluation}.jsonl`` and ``card.json``.
The task directory appears in one rename, complete or not at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

# Stages run as scripts from the repository root; make the library importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.artifacts import atomic_path, write_json  # noqa: E402
from pipeline.data import SPLITS, validate_record, write_jsonl  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.tasks import builder  # noqa: E402


def task_config(params_path: Path, task: str) -> tuple[dict, int]:
    if not params_path.is_file():
        raise PipelineError(f"{params_path} is missing", "run from the repository root, or pass --params")
    params = yaml.safe_load(params_path.read_text()) or {}
    cfg = (params.get("tasks_config") or {}).get(task)
    if not isinstance(cfg, dict):
        raise PipelineError(f"params.yaml has no tasks_config.{task} block",
                            f"add tasks_config.{task} with attribution/transfer/validation/evaluation sizes")
    return cfg, int(params.get("seed", 0))


def run(task: str, params_path: Path, out_root: Path) -> dict:
    cfg, seed = task_config(params_path, task)
    build = builder(task)
    started = time.perf_counter()
    result = build(cfg, seed)
    for split in SPLITS:
        for record in result.splits[split]:
            validate_record(record, f"{task}/{split}")
    with atomic_path(out_root / task, is_dir=True) as tmp:
        for split in SPLITS:
            write_jsonl(tmp / f"{split}.jsonl", result.splits[split])
        write_json(tmp / "card.json", result.card)
    counts = {split: len(result.splits[split]) for split in SPLITS}
    print(f"[data] {task}: {counts} in {time.perf_counter() - started:.1f}s -> {out_root / task}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description="Build one task's splits and data card.")
    ap.add_argument("task")
    ap.add_argument("--params", default="params.yaml", type=Path)
    ap.add_argument("--out", default="data/tasks", type=Path)
    args = ap.parse_args()
    try:
        run(args.task, args.params, args.out)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
