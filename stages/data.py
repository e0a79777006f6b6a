"""Stage `data@TASK`: build the task's splits (attribution, transfer, validation, evaluation)."""

import sys

from pipeline import layout
from pipeline.artifacts import atomic_path, write_json
from pipeline.data import write_jsonl
from pipeline.params import check_task, load_params, section
from pipeline.runner import run_stage
from pipeline.tasks import builder


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    cfg = section(params, "tasks_config").get(task) or {}
    built = builder(task)(cfg, int(params.get("seed", 0)))
    with atomic_path(layout.task_dir(task), is_dir=True) as tmp:
        for split, records in built.splits.items():
            write_jsonl(tmp / f"{split}.jsonl", records)
        write_json(tmp / "card.json", built.card)
    print(f"{task}: " + ", ".join(f"{s} {len(r)}" for s, r in built.splits.items()))


if __name__ == "__main__":
    run_stage(f"data@{sys.argv[1]}", main)
