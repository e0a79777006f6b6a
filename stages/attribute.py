"""Stage `attribute@TASK`: Layer Gradient x Activation score of every source block."""

import sys

from pipeline import layout
from pipeline.adapter import ModelAdapter
from pipeline.artifacts import write_json
from pipeline.attribution import layer_scores
from pipeline.data import encode_split
from pipeline.loading import load_model, load_tokenizer
from pipeline.pairing import critical_layers
from pipeline.params import check_task, load_params, section
from pipeline.runner import CostTag, run_stage


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    cfg = section(params, "attribution")
    src = str(layout.model_dir("source"))
    enc = encode_split(load_tokenizer(src), layout.task_dir(task), "attribution", section(params, "data"))
    adapter = ModelAdapter(load_model(src, str(cfg.get("dtype", "float32"))))
    scores = layer_scores(adapter, enc, int(cfg["batch_size"]), str(cfg["aggregate"]))
    write_json(layout.attribution_file(task), {
        "task": task, "aggregate": cfg["aggregate"], "examples": len(enc.ids),
        "scores": scores, "critical": critical_layers(scores, int(cfg.get("n_critical", 1)))})


if __name__ == "__main__":
    run_stage(f"attribute@{sys.argv[1]}", main, CostTag("semalign", sys.argv[1]))
