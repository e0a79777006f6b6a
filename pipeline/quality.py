"""SemAlign's transfer quality on a held-out split.

- The headline: how much SemAlign lowers held-out KL(source || model) and raises top-1
  agreement against the untouched target, with paired intervals (the per-example records
  come from ``pipeline.heldout``, which scores every method).
- Per-layer aligned-logit agreement: for each target layer k, how often the logit lens of
  h_t^(k) picks the same token as the aligned source logits z~_k. Both sides read the full
  vocabulary at every position, so the stage scores a budget of evenly spaced positions
  (``quality.max_positions``), not all of them.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pipeline.adapter import ModelAdapter
from pipeline.data import EncodedSplit, batches
from pipeline.heldout import Agreement, difference


def headline(target: Agreement, semalign: Agreement) -> dict[str, float]:
    """Held-out KL and top-1 of both; the KL reduction (target - SemAlign: positive when SemAlign
    is closer to the source) and the top-1 gain, each with its 95 % paired-bootstrap interval."""
    d = difference(target, semalign)
    return {"target_kl": target.mean_kl, "semalign_kl": semalign.mean_kl, "target_top1": target.mean_top1,
            "semalign_top1": semalign.mean_top1, "kl_reduction": -d["kl_diff"], "kl_reduction_low": -d["kl_diff_high"],
            "kl_reduction_high": -d["kl_diff_low"], "top1_gain": d["top1_diff"], "top1_gain_low": d["top1_diff_low"],
            "top1_gain_high": d["top1_diff_high"], "examples": d["examples"], "heldout_positions": d["positions"]}


def evenly_spaced(n: int, limit: int) -> torch.Tensor:
    """At most ``limit`` of the rows 0..n-1, evenly spaced (all of them when n <= limit)."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if n <= limit:
        return torch.arange(n)
    return torch.linspace(0, n - 1, limit).round().long().unique()


@torch.no_grad()
def target_states(adapter: ModelAdapter, encoded: EncodedSplit, batch_size: int, progress: bool = True,
                  rows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """[h^(1..L)] at the supervised positions: L tensors of (P, D_t); with ``rows`` (sorted
    indices into the P positions) only those rows, so L x P x D never has to be held."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(adapter.n_layers)]
    start = 0
    for sl in tqdm(batches(len(encoded.ids), batch_size), desc="quality", disable=not progress):
        mask = encoded.supervised[sl]
        n = int(mask.sum())
        keep = None if rows is None else rows[(rows >= start) & (rows < start + n)] - start
        start += n
        h0 = adapter.embed(encoded.input_ids[sl])
        for k, h in enumerate(adapter.run_blocks(h0, encoded.attention_mask[sl], 1, adapter.n_layers, collect=True)):
            per_layer[k].append(h[mask] if keep is None else h[mask][keep])
    return [torch.cat(x) for x in per_layer]


@torch.no_grad()
def layer_agreement(adapter: ModelAdapter, h: torch.Tensor, aligned_top1: torch.Tensor, chunk: int = 256) -> float:
    """Fraction of positions where argmax W n(h) equals the aligned logits' argmax."""
    hits = sum(int((adapter.logit_lens(h[i:i + chunk]).argmax(-1) == aligned_top1[i:i + chunk]).sum())
               for i in range(0, h.shape[0], chunk))
    return hits / max(h.shape[0], 1)
