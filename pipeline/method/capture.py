"""Source activations at supervised positions, and the source's top-K output logits.

One forward pass per batch: hooks on every block keep the residual stream only at the
supervised positions (nothing V- or T-sized is kept), and the LM head is applied only
there, so extraction costs no more than a plain forward over the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.core.adapter import ModelAdapter, input_device
from pipeline.core.data import EncodedSplit, length_batches
from pipeline.compute.parallel import SINGLE, Shard


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
    shard: Shard = SINGLE,
) -> Capture | None:
    """Run the model over ``encoded`` once, keeping ``layers`` (0..L) and top-K logits.

    Under several processes each computes its share of the batches and the main process gets
    the whole Capture, rows in single-process order (the others get None).
    """
    for l in layers:
        if l != 0:
            adapter.check_layer(l, "source layer")
    top_k = min(top_k, adapter.vocab_size)
    kept: dict[int, torch.Tensor] = {}
    mask_now: list[torch.Tensor] = []

    def keep(layer: int):
        def hook(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            kept[layer] = h[mask_now[0].to(h.device)].to(store_dtype).cpu()
        return hook

    handles = [adapter.block(l).register_forward_hook(keep(l)) for l in layers if l > 0]
    device = input_device(adapter.model)
    head = adapter.model.get_output_embeddings()
    pieces = []
    try:
        # Right-padded examples batched by length and trimmed to the batch's longest: a causal
        # model's states at real positions do not depend on the padding after them.
        mine = shard.mine(length_batches(encoded.attention_mask, batch_size))
        for b, idx in tqdm(mine, desc="extract", disable=not progress):
            width = int(encoded.attention_mask[idx].sum(dim=1).max())
            mask = encoded.supervised[idx, :width].to(device)
            mask_now[:] = [mask]
            input_ids = encoded.input_ids[idx, :width].to(device)
            attn = encoded.attention_mask[idx, :width].to(device)
            kept.clear()
            if 0 in layers:
                kept[0] = adapter.embed(input_ids)[mask].to(store_dtype).cpu()
            final = adapter.backbone(input_ids=input_ids, attention_mask=attn).last_hidden_state
            out = head(final[mask.to(final.device)])  # (P_b, V) only at supervised positions
            val, idx_k = out.float().topk(top_k, dim=-1)
            pieces.append((b, (idx, {l: kept[l] for l in layers}, idx_k.cpu(), val.cpu())))
    finally:
        for h in handles:
            h.remove()
    merged = shard.gather(pieces)
    if merged is None:
        return None
    return _in_split_order(merged, encoded.supervised.sum(dim=1), layers)


def _in_split_order(merged: list, counts: torch.Tensor, layers: list[int]) -> Capture:
    """Rows back in (example, position) order: each batch's rows are its examples' in turn."""
    per_example: list = [None] * len(counts)
    for idx, hidden, ids, vals in merged:
        sizes = counts[idx].tolist()
        parts = zip(*(torch.split(t, sizes) for t in [*(hidden[l] for l in layers), ids, vals]))
        for i, part in zip(idx.tolist(), parts):
            per_example[i] = part
    columns = list(zip(*per_example))
    hidden = {l: torch.cat(columns[j]) for j, l in enumerate(layers)}
    return Capture(hidden, torch.cat(columns[-2]), torch.cat(columns[-1]))
