"""Held-out agreement with the source, per validation example.

The quantity the transfer is meant to move: on the validation split's supervised positions,
KL(p_source || p_model) (source from its cached top-K output logits, renormalised; model exact
over the vocabulary) and top-1 agreement (the model's argmax equals the source's). Values are
kept per example, not only as a mean, so that two models scored on the same examples can be
compared with a paired bootstrap over examples (``pipeline.evaluation.stats.paired_bootstrap``): positions
of one example are not independent, examples are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.core.adapter import ModelAdapter, input_device
from pipeline.core.data import EncodedSplit, batches
from pipeline.core.errors import PipelineError
from pipeline.compute.parallel import SINGLE, Shard


@dataclass
class Agreement:
    """Per validation example: summed KL and top-1 hits over its supervised positions.

    kl, top1, positions: (N,) float64 / float64 / int64; ``positions`` may be 0 for an
    example whose answer was cut away (it then weighs nothing in the means)."""

    kl: torch.Tensor
    top1: torch.Tensor
    positions: torch.Tensor

    @property
    def mean_kl(self) -> float:
        return float(self.kl.sum() / self.positions.sum().clamp(min=1))

    @property
    def mean_top1(self) -> float:
        return float(self.top1.sum() / self.positions.sum().clamp(min=1))

    def to_json(self) -> dict[str, list]:
        return {"kl": self.kl.tolist(), "top1": self.top1.tolist(), "positions": self.positions.tolist()}

    @classmethod
    def from_json(cls, record: dict[str, list]) -> "Agreement":
        return cls(torch.tensor(record["kl"], dtype=torch.float64), torch.tensor(record["top1"], dtype=torch.float64),
                   torch.tensor(record["positions"], dtype=torch.long))


@torch.no_grad()
def position_agreement(adapter: ModelAdapter, h_last: torch.Tensor, src_ids: torch.Tensor,
                       src_logits: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per supervised position: KL(p_s || p_t) and whether the argmaxes agree.

    h_last: (P, D) output of the last block (before the final norm); src_ids/src_logits:
    (P, K) the source's top-K, largest first. Returns (P,) float64 KL and (P,) bool hits."""
    kls, hits = [], []
    for i in range(0, h_last.shape[0], chunk):
        logp_t = torch.log_softmax(adapter.logit_lens(h_last[i:i + chunk]).float(), dim=-1)
        logp_s = torch.log_softmax(src_logits[i:i + chunk].to(logp_t.device).float(), dim=-1)
        ids = src_ids[i:i + chunk].to(logp_t.device)
        kls.append((logp_s.exp() * (logp_s - logp_t.gather(-1, ids))).sum(-1).double().cpu())
        hits.append((logp_t.argmax(-1) == ids[:, 0]).cpu())
    if not kls:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
    return torch.cat(kls), torch.cat(hits)


def per_example(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sum (P,) position values into (N,) example totals; offsets: (N + 1,) row bounds."""
    counts = offsets[1:] - offsets[:-1]
    example = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return torch.zeros(len(counts), dtype=torch.float64).index_add_(0, example, values.double())


def agreement(adapter: ModelAdapter, h_last: torch.Tensor, src_ids: torch.Tensor, src_logits: torch.Tensor,
              offsets: torch.Tensor) -> Agreement:
    """Held-out agreement of a model whose last-block outputs at the supervised positions are
    ``h_last`` (P, D), per example (offsets: (N + 1,) row bounds of each example)."""
    kl, hits = position_agreement(adapter, h_last, src_ids, src_logits)
    return Agreement(per_example(kl, offsets), per_example(hits.double(), offsets), offsets[1:] - offsets[:-1])


@torch.no_grad()
def score(adapter: ModelAdapter, encoded: EncodedSplit, src_ids: torch.Tensor, src_logits: torch.Tensor,
          batch_size: int, progress: bool = True, shard: Shard = SINGLE) -> Agreement | None:
    """Held-out agreement of a whole model (untouched target, SemAlign's export or a baseline)
    on the split ``encoded``; src_ids/src_logits: (P, K) the source's top-K at its supervised
    positions, in (example, position) order (the extract stage's ``output_topk``).

    Each batch of examples is scored on its own (its positions' KL and hits), so several
    processes can each take a share of the batches; the main process puts the per-position
    values together in batch order, as one process does, and gets the result (the others None).
    """
    if src_ids.shape[0] != encoded.n_supervised:
        raise PipelineError(f"the source's cached outputs have {src_ids.shape[0]} rows, the split "
                            f"{encoded.n_supervised} supervised positions", "re-run the extract stage for this task")
    device, offsets = input_device(adapter.model), encoded.offsets()
    pieces = []
    for b, sl in tqdm(shard.mine(batches(len(encoded.ids), batch_size)), desc="held-out", disable=not progress):
        h = adapter.run_blocks(adapter.embed(encoded.input_ids[sl].to(device)), encoded.attention_mask[sl].to(device),
                               1, adapter.n_layers)
        rows = slice(int(offsets[sl.start]), int(offsets[sl.stop]))
        pieces.append((b, position_agreement(adapter, h[encoded.supervised[sl].to(h.device)], src_ids[rows],
                                             src_logits[rows])))
    merged = shard.gather(pieces)
    if merged is None:
        return None
    kl = torch.cat([m[0] for m in merged]) if merged else torch.zeros(0, dtype=torch.float64)
    hits = torch.cat([m[1] for m in merged]) if merged else torch.zeros(0, dtype=torch.bool)
    return Agreement(per_example(kl, offsets), per_example(hits.double(), offsets), offsets[1:] - offsets[:-1])


def difference(reference: Agreement, model: Agreement, n_boot: int = 10000, seed: int = 0) -> dict[str, float]:
    """``model`` minus ``reference`` on the same examples: mean KL and top-1 agreement, each
    with a 95 % paired-bootstrap interval over examples (``pipeline.evaluation.stats.paired_bootstrap``).
    A negative KL difference means the model is closer to the source than the reference."""
    from pipeline.evaluation.stats import paired_bootstrap

    if not torch.equal(reference.positions, model.positions):
        raise PipelineError("two held-out records were not scored on the same examples (their positions differ)",
                            "re-run the heldout stages of this task (`dvc repro`)")
    den = reference.positions.double().tolist()
    out: dict[str, float] = {}
    for name in ("kl", "top1"):
        res = paired_bootstrap(getattr(reference, name).tolist(), getattr(model, name).tolist(), den,
                               n_boot=n_boot, seed=seed)
        out.update({f"{name}_diff": res["diff"], f"{name}_diff_low": res["ci_low"],
                    f"{name}_diff_high": res["ci_high"]})
    out["examples"] = int((reference.positions > 0).sum())
    out["positions"] = int(reference.positions.sum())
    return out
