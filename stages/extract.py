"""Stage `extract@TASK`: source hidden states (every layer) at supervised positions and the
source's top-K output logits, for the transfer and validation splits. One file per layer."""

import sys

from pipeline.compute import launch
from pipeline.core import layout
from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import atomic_path, save_tensors
from pipeline.method.capture import capture
from pipeline.compute.placement import place
from pipeline.core.data import encode_split
from pipeline.core.loading import load_model, load_tokenizer, torch_dtype
from pipeline.core.params import check_task, load_params, section
from pipeline.core.runner import CostTag, run_stage

SPLITS = ("transfer", "validation")


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    cfg, data = section(params, "extract"), section(params, "data")
    placement = place(params, f"extract@{task}")
    src = str(layout.model_dir("source"))
    tok = load_tokenizer(src)
    encoded = {s: encode_split(tok, layout.task_dir(task), s, data) for s in SPLITS}  # fail on bad data first
    adapter = ModelAdapter(load_model(src, placement=placement, spread=True))
    layers = list(range(0, adapter.n_layers + 1))
    got = {split: capture(adapter, enc, layers, int(cfg["top_k"]), int(cfg["batch_size"]),
                          torch_dtype(str(cfg.get("hidden_dtype", "bfloat16"))), shard=placement.shard)
           for split, enc in encoded.items()}
    if not placement.shard.is_main:
        return  # the main process writes what every process computed
    with atomic_path(layout.source_dir(task), is_dir=True) as tmp:
        for split, enc in encoded.items():
            out = tmp / split
            save_tensors(out / "tokens.safetensors", enc.tensors(), {"ids": enc.ids})
            save_tensors(out / "output_topk.safetensors", {"topk_ids": got[split].topk_ids,
                                                           "topk_logits": got[split].topk_logits})
            for layer, hidden in got[split].hidden.items():
                save_tensors(layout.layer_file(out, layer), {"hidden": hidden}, {"layer": layer})
            print(f"{task}/{split}: {len(enc.ids)} examples, {enc.n_supervised} supervised positions")


if __name__ == "__main__":
    launch.data_parallel("stages.extract")
    run_stage(f"extract@{sys.argv[1]}", main, CostTag("extract", sys.argv[1]))
