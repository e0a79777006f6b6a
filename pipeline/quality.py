"""Transfer quality on a held-out split, before any benchmark: does the target behave
more like the source?

- output KL(source || target) at supervised positions (source from its cached top-K
  logits, renormalised; target exact over the vocabulary) and top-1 agreement;
- per target layer, aligned-logit agreement: how often the logit lens of h_t^(k) picks the
  same token as the aligned source logits z~_k.

Everything is summed per batch of examples, so several processes can each take a share of the
batches (:class:`pipeline.parallel.Shard`) and the main process adds the batch sums in batch
order, as one process does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.adapter import ModelAdapter
from pipeline.compute import input_device
from pipeline.data import EncodedSplit, batches
from pipeline.parallel import SINGLE, Shard


def _batch_states(adapter: ModelAdapter, encoded: EncodedSplit, sl: slice) -> list[torch.Tensor]:
    """[h^(1..L)] of one batch at its supervised positions, on the model's device."""
    device = input_device(adapter.model)
    mask = encoded.supervised[sl].to(device)
    h0 = adapter.embed(encoded.input_ids[sl].to(device))
    hs = adapter.run_blocks(h0, encoded.attention_mask[sl].to(device), 1, adapter.n_layers, collect=True)
    return [h[mask.to(h.device)] for h in hs]


@torch.no_grad()
def target_states(adapter: ModelAdapter, encoded: EncodedSplit, batch_size: int, progress: bool = True,
                  shard: Shard = SINGLE) -> list[torch.Tensor] | None:
    """[h^(1..L)] at the supervised positions: L tensors of (P, D_t) on the CPU, on the main
    process (None on the others)."""
    pieces = [(b, [h.cpu() for h in _batch_states(adapter, encoded, sl)])
              for b, sl in tqdm(shard.mine(batches(len(encoded.ids), batch_size)), desc="quality",
                                disable=not progress)]
    merged = shard.gather(pieces)
    if merged is None:
        return None
    return [torch.cat([m[k] for m in merged]) for k in range(adapter.n_layers)]


def position_rows(encoded: EncodedSplit, batch_size: int, shard: Shard = SINGLE) -> torch.Tensor:
    """Rows of the (P, ...) position-flattened artifacts in this process's batches."""
    offsets = encoded.offsets()
    spans = [torch.arange(int(offsets[sl.start]), int(offsets[sl.stop]))
             for _, sl in shard.mine(batches(len(encoded.ids), batch_size))]
    return torch.cat(spans) if spans else torch.zeros(0, dtype=torch.long)


@dataclass
class Agreement:
    """Sums over supervised positions: KL(source || model), top-1 hits, aligned-logit hits per layer."""

    positions: int
    kl_sum: float
    top1_hits: int
    layer_hits: list[int]

    def metrics(self, name: str) -> dict[str, float]:
        n = max(self.positions, 1)
        layers = [h / n for h in self.layer_hits]
        return {f"{name}_kl": self.kl_sum / n, f"{name}_top1": self.top1_hits / n,
                f"{name}_layer_agreement": sum(layers) / len(layers)}

    def per_layer(self) -> list[float]:
        return [h / max(self.positions, 1) for h in self.layer_hits]


@torch.no_grad()
def _output_sums(adapter: ModelAdapter, h_last: torch.Tensor, src_ids: torch.Tensor, src_logits: torch.Tensor,
                 chunk: int = 256) -> tuple[float, int]:
    kl_sum, agree = 0.0, 0
    for i in range(0, h_last.shape[0], chunk):
        logp_t = torch.log_softmax(adapter.logit_lens(h_last[i:i + chunk]).float(), dim=-1)
        logp_s = torch.log_softmax(src_logits[i:i + chunk].to(logp_t.device).float(), dim=-1)
        ids = src_ids[i:i + chunk].to(logp_t.device)
        kl_sum += float((logp_s.exp() * (logp_s - logp_t.gather(-1, ids))).sum())
        agree += int((logp_t.argmax(-1) == ids[:, 0]).sum())
    return kl_sum, agree


@torch.no_grad()
def _layer_hits(adapter: ModelAdapter, h: torch.Tensor, aligned_top1: torch.Tensor, chunk: int = 256) -> int:
    return sum(int((adapter.logit_lens(h[i:i + chunk]).argmax(-1).cpu() == aligned_top1[i:i + chunk]).sum())
               for i in range(0, h.shape[0], chunk))


@torch.no_grad()
def agreement(adapter: ModelAdapter, encoded: EncodedSplit, batch_size: int, aligned_top1: torch.Tensor,
              src_ids: torch.Tensor, src_logits: torch.Tensor, progress: bool = True,
              shard: Shard = SINGLE) -> Agreement | None:
    """Output KL and top-1 agreement with the source, and aligned-logit agreement per layer.

    aligned_top1: (L, P) argmax of the aligned source logits per layer and position (only the
    rows of this process's batches are read); src_ids/src_logits: (P, K) the source's top-K.
    The main process gets the sums over every batch (None on the others).
    """
    offsets = encoded.offsets()
    pieces = []
    for b, sl in tqdm(shard.mine(batches(len(encoded.ids), batch_size)), desc="quality", disable=not progress):
        rows = slice(int(offsets[sl.start]), int(offsets[sl.stop]))
        hs = _batch_states(adapter, encoded, sl)
        kl_sum, top1 = _output_sums(adapter, hs[-1], src_ids[rows], src_logits[rows])
        hits = [_layer_hits(adapter, h, aligned_top1[k, rows]) for k, h in enumerate(hs)]
        pieces.append((b, (rows.stop - rows.start, kl_sum, top1, hits)))
    merged = shard.gather(pieces)
    if merged is None:
        return None
    total = Agreement(0, 0.0, 0, [0] * adapter.n_layers)
    for n, kl_sum, top1, hits in merged:
        total.positions += n
        total.kl_sum += kl_sum
        total.top1_hits += top1
        total.layer_hits = [a + b for a, b in zip(total.layer_hits, hits)]
    return total
