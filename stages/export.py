"""Stage `export@TASK-SEED`: the transferred target = original target + every trained block of
that seed's chain, as a Hugging Face directory."""

import sys

from pipeline.compute import launch
from pipeline.core import chain, layout
from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import load_tensors
from pipeline.compute.placement import place
from pipeline.method.export import export_model
from pipeline.core.loading import load_model, load_tokenizer, torch_dtype
from pipeline.core.params import check_seed, check_task, load_params, seeds, storage_dtype, task_and_seed
from pipeline.core.runner import CostTag, run_stage


def main() -> None:
    task, seed = task_and_seed(sys.argv[1:])
    params = load_params()
    check_task(params, task)
    check_seed(params, seed)
    tgt = str(layout.model_dir("target"))
    placement = place(params, f"export@{layout.run_name(task, seed)}", uses_device=False,
                      why_cpu="it only copies trained blocks into the target's weights")
    target = ModelAdapter(load_model(tgt, placement=placement))
    chain.check_chain(chain.load_chain(), list(params["tasks"]), seeds(params), target.n_layers)
    blocks = {k: load_tensors(layout.frontier_dir(task, chain.key(task, k, seed)) / "block.safetensors",
                              f"frontier@{chain.key(task, k, seed)}")
              for k in range(1, target.n_layers + 1)}
    export_model(target, load_tokenizer(tgt), blocks, layout.export_dir(task, seed),
                 dtype=torch_dtype(storage_dtype(params)))


if __name__ == "__main__":
    launch.one_process("stages.export")
    TASK, SEED = task_and_seed(sys.argv[1:])
    run_stage(f"export@{layout.run_name(TASK, SEED)}", main, CostTag("semalign", TASK, SEED))
