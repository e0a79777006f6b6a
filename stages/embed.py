"""Stage `embed@TASK`: h^(0) of the transfer split in the target, where the chain starts."""

import sys

from pipeline import chain, layout
from pipeline.adapter import ModelAdapter
from pipeline.artifacts import atomic_path, load_tensors, save_tensors
from pipeline.frontier import embed_states
from pipeline.loading import load_model
from pipeline.params import check_task, load_params, section
from pipeline.runner import run_stage


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    target = ModelAdapter(load_model(str(layout.model_dir("target")), str(section(params, "models").get("dtype", "bfloat16"))))
    tokens = load_tensors(layout.source_dir(task) / "transfer" / "tokens.safetensors", "the extract stage")
    with atomic_path(layout.frontier_dir(task, chain.key(task, 0, target.n_layers)), is_dir=True) as tmp:
        save_tensors(tmp / "states.safetensors", {"hidden": embed_states(target, tokens["input_ids"]), **tokens})


if __name__ == "__main__":
    run_stage(f"embed@{sys.argv[1]}", main)
