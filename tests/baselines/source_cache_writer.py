"""Test helper: write cached source outputs exactly as the extract stage lays them out.

Uses the extract stage's own ``pipeline.capture``; only the file writing is repeated here so
that the baseline tests need no DVC run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline import layout
from pipeline.adapter import ModelAdapter
from pipeline.artifacts import save_tensors
from pipeline.capture import capture
from pipeline.data import encode
from pipeline.loading import load_model, load_tokenizer


def write_source_cache(source_dir: Path, records: list[dict], out: Path, max_length: int, top_k: int,
                       supervise: str = "answer") -> None:
    tok = load_tokenizer(str(source_dir))
    adapter = ModelAdapter(load_model(str(source_dir), "float32"))
    enc = encode(tok, records, max_length, supervise)
    got = capture(adapter, enc, list(range(adapter.n_layers + 1)), top_k, batch_size=8,
                  store_dtype=torch.bfloat16, progress=False)
    save_tensors(out / "tokens.safetensors", enc.tensors(), {"ids": enc.ids})
    save_tensors(out / "output_topk.safetensors", {"topk_ids": got.topk_ids, "topk_logits": got.topk_logits})
    for layer, hidden in got.hidden.items():
        save_tensors(layout.layer_file(out, layer), {"hidden": hidden}, {"layer": layer})
