"""Held-out agreement with the source, per validation example.

The quantity the transfer is meant to move: on the validation split's supervised positions,
KL(p_source || p_model) (source from its cached top-K output logits, renormalised; model exact
over the vocabulary) and top-1 agreement (the model's argmax equals the source's). Values are
kept per example, not only as a mean, so that two models scored on the same examples can be
compared with a paired bootstrap over examples (``pipeline.stats.paired_bootstrap``): positions
of one example are not independent, examples are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.adapter import ModelAdapter


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
