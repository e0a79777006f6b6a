"""Stage `data@TASK`: build one task's splits and data card.

    python -m stages.data TASK

Reads ``seed`` and ``tasks_config.TASK`` from params.yaml and writes
``data/tasks/TASK/{attribution,transfer,validation,evaluation}.jsonl`` and ``card.json``,
in one rename: complete or not at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core import layout
from pipeline.core.artifacts import atomic_path, write_json
from pipeline.core.data import SPLITS, validate_record, write_jsonl
from pipeline.core.errors import PipelineError
from pipeline.core.params import PARAMS, diagnostic_tasks, load_params
from pipeline.core.runner import run_stage
from pipeline.tasks import builder


def run(task: str, params_path: Path = PARAMS, out_root: Path = layout.TASKS) -> dict[str, int]:
    params = load_params(params_path)
    diagnostic_tasks(params)  # the first stage: a bad list fails before any model runs
    cfg = (params.get("tasks_config") or {}).get(task)
    if not isinstance(cfg, dict):
        raise PipelineError(f"params.yaml has no tasks_config.{task} block",
                            f"add tasks_config.{task} with attribution/transfer/validation/evaluation sizes")
    result = builder(task)(cfg, int(params.get("seed", 0)))
    for split in SPLITS:
        for record in result.splits[split]:
            validate_record(record, f"{task}/{split}")
    with atomic_path(Path(out_root) / task, is_dir=True) as tmp:
        for split in SPLITS:
            write_jsonl(tmp / f"{split}.jsonl", result.splits[split])
        write_json(tmp / "card.json", result.card)
    counts = {split: len(result.splits[split]) for split in SPLITS}
    print(f"{task}: {counts}")
    return counts


if __name__ == "__main__":
    run_stage(f"data@{sys.argv[1]}", lambda: run(sys.argv[1]))
