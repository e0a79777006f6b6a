"""Stage `attribute@TASK`: Layer Gradient x Activation score of every source block."""

import sys

from pipeline.compute import launch
from pipeline.core import layout
from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import write_json
from pipeline.method.attribution import layer_scores
from pipeline.compute.placement import place
from pipeline.core.data import encode_split
from pipeline.core.loading import load_model, load_tokenizer
from pipeline.method.pairing import critical_layers
from pipeline.core.params import check_task, load_params, section
from pipeline.core.runner import CostTag, run_stage


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    cfg = section(params, "attribution")
    placement = place(params, f"attribute@{task}")
    src = str(layout.model_dir("source"))
    enc = encode_split(load_tokenizer(src), layout.task_dir(task), "attribution", section(params, "data"))
    adapter = ModelAdapter(load_model(src, placement=placement, spread=True))
    scores = layer_scores(adapter, enc, int(cfg["batch_size"]), str(cfg["aggregate"]), shard=placement.shard)
    if scores is None:
        return  # the main process writes the scores every process contributed to
    write_json(layout.attribution_file(task), {
        "task": task, "aggregate": cfg["aggregate"], "examples": len(enc.ids),
        "scores": scores, "critical": critical_layers(scores, int(cfg.get("n_critical", 1)))})


if __name__ == "__main__":
    launch.data_parallel("stages.attribute")
    run_stage(f"attribute@{sys.argv[1]}", main, CostTag("semalign", sys.argv[1]))
