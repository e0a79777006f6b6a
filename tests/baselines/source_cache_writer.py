"""Test helper: write the cached source outputs the way the extraction stage does.

A stand-in so that the baseline tests need nothing from the extraction stage; it runs the
(tiny) source model and writes tokens / output_topk / layer_XX files in the documented format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.adapter import ModelAdapter
from pipeline.artifacts import save_tensors
from pipeline.data import encode
from pipeline.loading import load_model, load_tokenizer


@torch.no_grad()
def write_source_cache(source_dir: Path, records: list[dict], out: Path, max_length: int, top_k: int | None = None,
                       supervise: str = "answer") -> None:
    tok = load_tokenizer(str(source_dir))
    model = load_model(str(source_dir), "float32")
    adapter = ModelAdapter(model)
    data = encode(tok, records, max_length, supervise)
    states: dict[int, torch.Tensor] = {}
    hooks = [adapter.block(k).register_forward_hook(
        lambda _m, _a, o, k=k: states.__setitem__(k, o[0] if isinstance(o, tuple) else o))
        for k in range(1, adapter.n_layers + 1)]
    logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    for h in hooks:
        h.remove()
    sup = data.supervised
    picked = logits[sup].float()
    k = top_k or picked.shape[-1]
    values, ids = picked.topk(k, dim=-1)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / "tokens.safetensors", data.tensors())
    save_tensors(out / "output_topk.safetensors", {"topk_ids": ids, "topk_logits": values})
    for layer, h in states.items():
        save_tensors(out / f"layer_{layer:02d}.safetensors", {"hidden": h[sup].to(torch.bfloat16)})
