"""Source activations at supervised positions, and the source's top-K output logits.

One forward pass per batch: hooks on every block keep the residual stream only at the
supervised positions (nothing V- or T-sized is kept), and the LM head is applied only
there, so extraction costs no more than a plain forward over the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.adapter import ModelAdapter
from pipeline.data import EncodedSplit, batches


@dataclass
class Capture:
    """hidden[l]: (P, D_s) residual stream after block l (0 = embeddings) at the P supervised
    positions, rows in (example, position) order; topk_ids/topk_logits: (P, K) output logits."""

    hidden: dict[int, torch.Tensor]
    topk_ids: torch.Tensor
    topk_logits: torch.Tensor


@torch.no_grad()
def capture(
    adapter: ModelAdapter,
    encoded: EncodedSplit,
    layers: list[int],
    top_k: int,
    batch_size: int,
    store_dtype: torch.dtype = torch.bfloat16,
    progress: bool = True,
) -> Capture:
    """Run the model over ``encoded`` once, keeping ``layers`` (0..L) and top-K logits."""
    for l in layers:
        if l != 0:
            adapter.check_layer(l, "source layer")
    top_k = min(top_k, adapter.vocab_size)
    kept: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    mask_now: list[torch.Tensor] = []

    def keep(layer: int):
        def hook(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            kept[layer].append(h[mask_now[0]].to(store_dtype))
        return hook

    handles = [adapter.block(l).register_forward_hook(keep(l)) for l in layers if l > 0]
    ids, logits = [], []
    try:
        for sl in tqdm(batches(len(encoded.ids), batch_size), desc="extract", disable=not progress):
            mask = encoded.supervised[sl]
            mask_now[:] = [mask]
            input_ids, attn = encoded.input_ids[sl], encoded.attention_mask[sl]
            if 0 in kept:
                kept[0].append(adapter.embed(input_ids)[mask].to(store_dtype))
            final = adapter.backbone(input_ids=input_ids, attention_mask=attn).last_hidden_state
            head = adapter.lm_head
            out = final[mask].to(head.dtype) @ head.T  # (P_b, V) only at supervised positions
            val, idx = out.float().topk(top_k, dim=-1)
            ids.append(idx)
            logits.append(val)
    finally:
        for h in handles:
            h.remove()
    hidden = {l: torch.cat(v) for l, v in kept.items()}
    return Capture(hidden, torch.cat(ids), torch.cat(logits))
