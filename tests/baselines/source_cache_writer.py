"""Test helper: write cached source outputs exactly as the extract stage lays them out.

Uses the extract stage's own ``pipeline.method.capture``; only the file writing is repeated here so
that the baseline tests need no DVC run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core import layout
from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import save_tensors
from pipeline.method.capture import capture
from pipeline.core.data import encode
from pipeline.core.loading import load_model, load_tokenizer


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
