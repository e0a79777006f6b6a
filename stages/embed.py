"""Stage `embed@TASK`: h^(0) of the transfer split in the target, where the chain starts."""

import sys

from pipeline.compute import launch
from pipeline.core import chain, layout
from pipeline.core.adapter import ModelAdapter, input_device
from pipeline.core.artifacts import atomic_path, load_tensors, save_tensors
from pipeline.compute.placement import place
from pipeline.method.frontier import embed_states
from pipeline.core.loading import load_model, torch_dtype
from pipeline.core.params import check_task, load_params, storage_dtype
from pipeline.core.runner import CostTag, run_stage


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    placement = place(params, f"embed@{task}")
    target = ModelAdapter(load_model(str(layout.model_dir("target")), placement=placement))
    tokens = load_tensors(layout.source_dir(task) / "transfer" / "tokens.safetensors", "the extract stage")
    hidden = embed_states(target, tokens["input_ids"].to(input_device(target.model)))
    with atomic_path(layout.frontier_dir(task, chain.key(task, 0)), is_dir=True) as tmp:
        save_tensors(tmp / "states.safetensors", {"hidden": hidden.to(torch_dtype(storage_dtype(params))), **tokens})


if __name__ == "__main__":
    launch.one_process("stages.embed")
    run_stage(f"embed@{sys.argv[1]}", main, CostTag("semalign", sys.argv[1]))
