"""Stage `export@TASK`: the transferred target = original target + every trained block."""

import sys

from pipeline import chain, layout
from pipeline.adapter import ModelAdapter
from pipeline.artifacts import load_tensors
from pipeline.export import export_model
from pipeline.loading import load_model, load_tokenizer
from pipeline.params import check_task, load_params, section
from pipeline.runner import run_stage


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    tgt = str(layout.model_dir("target"))
    target = ModelAdapter(load_model(tgt, str(section(params, "models").get("dtype", "bfloat16"))))
    chain.check_chain(params.get("chain"), list(params["tasks"]), target.n_layers)
    blocks = {k: load_tensors(layout.frontier_dir(task, chain.key(task, k, target.n_layers)) / "block.safetensors",
                              f"frontier@{chain.key(task, k, target.n_layers)}")
              for k in range(1, target.n_layers + 1)}
    export_model(target, load_tokenizer(tgt), blocks, layout.export_dir(task))


if __name__ == "__main__":
    run_stage(f"export@{sys.argv[1]}", main)
