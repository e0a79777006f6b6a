"""SemAlign's transfer quality on a held-out split.

- The headline: how much SemAlign lowers held-out KL(source || model) and raises top-1
  agreement against the untouched target, with paired intervals (the per-example records
  come from ``pipeline.evaluation.heldout``, which scores every method).
- Per-layer aligned-logit agreement: for each target layer k, how often the logit lens of
  h_t^(k) picks the same token as the aligned source logits z~_k. Both sides read the full
  vocabulary at every position, so the stage scores a budget of evenly spaced positions
  (``quality.max_positions``), not all of them.

Under several processes (:class:`pipeline.compute.parallel.Shard`) each takes a share of the batches of
examples, computes the scored positions that fall in them and counts its hits per layer; the
main process adds the counts, which are what one process counts.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pipeline.core.adapter import ModelAdapter, input_device
from pipeline.core.data import EncodedSplit, batches
from pipeline.evaluation.heldout import Agreement, difference
from pipeline.compute.parallel import SINGLE, Shard


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


def shard_rows(encoded: EncodedSplit, batch_size: int, rows: torch.Tensor, shard: Shard = SINGLE) -> torch.Tensor:
    """The entries of ``rows`` (sorted indices into the P supervised positions) that lie in this
    process's batches, in order: the rows :func:`state_pieces` computes, in its order."""
    offsets = encoded.offsets()
    own = [rows[(rows >= offsets[sl.start]) & (rows < offsets[sl.stop])]
           for _, sl in shard.mine(batches(len(encoded.ids), batch_size))]
    return torch.cat(own) if own else rows[:0]


@torch.no_grad()
def state_pieces(adapter: ModelAdapter, encoded: EncodedSplit, batch_size: int, progress: bool = True,
                 rows: torch.Tensor | None = None, shard: Shard = SINGLE) -> list[tuple[int, list[torch.Tensor]]]:
    """(batch index, [h^(1..L)] at the batch's supervised positions) for this process's batches,
    on the model's device; with ``rows`` (sorted indices into the P positions) only those rows.
    Every batch is computed with exactly the rows (and padding) it has in one process."""
    device = input_device(adapter.model)
    offsets = encoded.offsets()
    pieces = []
    for b, sl in tqdm(shard.mine(batches(len(encoded.ids), batch_size)), desc="quality", disable=not progress):
        mask = encoded.supervised[sl].to(device)
        start, stop = int(offsets[sl.start]), int(offsets[sl.stop])
        keep = None if rows is None else (rows[(rows >= start) & (rows < stop)] - start).to(device)
        h0 = adapter.embed(encoded.input_ids[sl].to(device))
        hs = adapter.run_blocks(h0, encoded.attention_mask[sl].to(device), 1, adapter.n_layers, collect=True)
        hs = [h[mask.to(h.device)] for h in hs]
        pieces.append((b, hs if keep is None else [h[keep.to(h.device)] for h in hs]))
    return pieces


def stack_layers(adapter: ModelAdapter, pieces: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-batch [h^(1..L)] (in order) as L tensors of (P, D_t)."""
    if not pieces:  # a process with no batches (more processes than batches)
        return [torch.zeros(0, adapter.width, dtype=adapter.lm_head.dtype) for _ in range(adapter.n_layers)]
    return [torch.cat([p[k] for p in pieces]) for k in range(adapter.n_layers)]


def target_states(adapter: ModelAdapter, encoded: EncodedSplit, batch_size: int, progress: bool = True,
                  rows: torch.Tensor | None = None, shard: Shard = SINGLE) -> list[torch.Tensor] | None:
    """[h^(1..L)] at the supervised positions: L tensors of (P, D_t); with ``rows`` (sorted
    indices into the P positions) only those rows, so L x P x D never has to be held. Under
    several processes each computes its share of the batches and the main process gets them
    all, in batch order, on the CPU (the others get None)."""
    pieces = state_pieces(adapter, encoded, batch_size, progress, rows, shard)
    if shard.world > 1:
        pieces = [(b, [h.cpu() for h in hs]) for b, hs in pieces]
    merged = shard.gather(pieces)
    return None if merged is None else stack_layers(adapter, merged)


@torch.no_grad()
def layer_hits(adapter: ModelAdapter, h: torch.Tensor, aligned_top1: torch.Tensor, chunk: int = 256) -> int:
    """Positions where argmax W n(h) equals the aligned logits' argmax."""
    return sum(int((adapter.logit_lens(h[i:i + chunk]).argmax(-1).cpu() == aligned_top1[i:i + chunk].cpu()).sum())
               for i in range(0, h.shape[0], chunk))


@torch.no_grad()
def layer_agreement(adapter: ModelAdapter, h: torch.Tensor, aligned_top1: torch.Tensor, chunk: int = 256) -> float:
    """Fraction of positions where argmax W n(h) equals the aligned logits' argmax."""
    return layer_hits(adapter, h, aligned_top1, chunk) / max(h.shape[0], 1)
