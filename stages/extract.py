"""Stage `extract@TASK`: source hidden states (every layer) at supervised positions and the
source's top-K output logits, for the transfer and validation splits. One file per layer."""

import sys

from pipeline import layout
from pipeline.adapter import ModelAdapter
from pipeline.artifacts import atomic_path, save_tensors
from pipeline.capture import capture
from pipeline.data import encode_split
from pipeline.loading import load_model, load_tokenizer, torch_dtype
from pipeline.params import check_task, compute_dtype, load_params, section
from pipeline.runner import CostTag, run_stage

SPLITS = ("transfer", "validation")


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    cfg, data = section(params, "extract"), section(params, "data")
    src = str(layout.model_dir("source"))
    tok = load_tokenizer(src)
    encoded = {s: encode_split(tok, layout.task_dir(task), s, data) for s in SPLITS}  # fail on bad data first
    adapter = ModelAdapter(load_model(src, compute_dtype(params)))
    layers = list(range(0, adapter.n_layers + 1))
    with atomic_path(layout.source_dir(task), is_dir=True) as tmp:
        for split, enc in encoded.items():
            got = capture(adapter, enc, layers, int(cfg["top_k"]), int(cfg["batch_size"]),
                          torch_dtype(str(cfg.get("hidden_dtype", "bfloat16"))))
            out = tmp / split
            save_tensors(out / "tokens.safetensors", enc.tensors(), {"ids": enc.ids})
            save_tensors(out / "output_topk.safetensors", {"topk_ids": got.topk_ids, "topk_logits": got.topk_logits})
            for layer, hidden in got.hidden.items():
                save_tensors(layout.layer_file(out, layer), {"hidden": hidden}, {"layer": layer})
            print(f"{task}/{split}: {len(enc.ids)} examples, {enc.n_supervised} supervised positions")


if __name__ == "__main__":
    run_stage(f"extract@{sys.argv[1]}", main, CostTag("extract", sys.argv[1]))
