"""Transfer quality on a held-out split, before any benchmark: does the target behave
more like the source?

- output KL(source || target) at supervised positions (source from its cached top-K
  logits, renormalised; target exact over the vocabulary) and top-1 agreement;
- per target layer, aligned-logit agreement: how often the logit lens of h_t^(k) picks the
  same token as the aligned source logits z~_k.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pipeline.adapter import ModelAdapter
from pipeline.data import EncodedSplit, batches


@torch.no_grad()
def target_states(adapter: ModelAdapter, encoded: EncodedSplit, batch_size: int, progress: bool = True
                  ) -> list[torch.Tensor]:
    """[h^(1..L)] at the supervised positions: L tensors of (P, D_t)."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(adapter.n_layers)]
    for sl in tqdm(batches(len(encoded.ids), batch_size), desc="quality", disable=not progress):
        mask = encoded.supervised[sl]
        h0 = adapter.embed(encoded.input_ids[sl])
        for k, h in enumerate(adapter.run_blocks(h0, encoded.attention_mask[sl], 1, adapter.n_layers, collect=True)):
            per_layer[k].append(h[mask])
    return [torch.cat(x) for x in per_layer]


@torch.no_grad()
def output_agreement(adapter: ModelAdapter, h_last: torch.Tensor, src_ids: torch.Tensor,
                     src_logits: torch.Tensor, chunk: int = 256) -> dict[str, float]:
    kl_sum, agree = 0.0, 0
    for i in range(0, h_last.shape[0], chunk):
        logp_t = torch.log_softmax(adapter.logit_lens(h_last[i:i + chunk]).float(), dim=-1)
        logp_s = torch.log_softmax(src_logits[i:i + chunk].float(), dim=-1)
        ids = src_ids[i:i + chunk]
        kl_sum += float((logp_s.exp() * (logp_s - logp_t.gather(-1, ids))).sum())
        agree += int((logp_t.argmax(-1) == ids[:, 0]).sum())
    n = max(h_last.shape[0], 1)
    return {"kl": kl_sum / n, "top1_agreement": agree / n}


@torch.no_grad()
def layer_agreement(adapter: ModelAdapter, h: torch.Tensor, aligned_top1: torch.Tensor, chunk: int = 256) -> float:
    """Fraction of positions where argmax W n(h) equals the aligned logits' argmax."""
    hits = sum(int((adapter.logit_lens(h[i:i + chunk]).argmax(-1) == aligned_top1[i:i + chunk]).sum())
               for i in range(0, h.shape[0], chunk))
    return hits / max(h.shape[0], 1)
