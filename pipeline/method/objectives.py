"""Per-stage losses of the frontier schedule.

All take rows at the supervised positions of the current batch, in (example, position)
order, and return a scalar mean over positions (or examples, for the relation loss).

- ``fisher``   (ACL, default): Fisher-weighted quadratic surrogate on target-space aligned logits
- ``cosine``   (paper v1): 1 - cos(h_t^(k), h~_k)
- ``relation`` (paper v2): centred token-token relation geometry of the residual contribution
- ``output_kl``: tau^2 KL(p_source || p_target) on the real output distributions (final stage)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.core.adapter import ModelAdapter
from pipeline.core.errors import PipelineError
from pipeline.method.fisher import surrogate

LAYER_OBJECTIVES = ("fisher", "cosine", "relation")


def check_objective(name: str) -> None:
    if name not in LAYER_OBJECTIVES:
        raise PipelineError(f"unknown frontier objective {name!r}",
                            f"set frontier.objective to one of {LAYER_OBJECTIVES}")


def fisher_loss(target: ModelAdapter, h: torch.Tensor, ids: torch.Tensor, z_ref: torch.Tensor,
                p_ref: torch.Tensor, tau: float) -> torch.Tensor:
    """h: (P, D_t) block output; ids/z_ref/p_ref: (P, K). Only K LM-head rows are touched."""
    z = target.logit_lens(h, rows=ids)
    return surrogate(z.float(), z_ref.float(), p_ref.float(), tau).mean()


def cosine_loss(h: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(h.float(), aligned.float(), dim=-1)).mean()


def _relation(x: torch.Tensor) -> torch.Tensor:
    """Unit-Frobenius centred Gram matrix C X X^T C of (T_i, D) rows."""
    x = x.float() - x.float().mean(0, keepdim=True)
    g = x @ x.T
    return g / g.norm().clamp(min=1e-12)


def relation_loss(delta: torch.Tensor, aligned_delta: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """|| G/||G|| - G~/||G~|| ||_F^2 per example, averaged; offsets: (B + 1,) row bounds."""
    losses = []
    for i in range(len(offsets) - 1):
        a, b = int(offsets[i]), int(offsets[i + 1])
        if b - a < 2:
            continue  # one token has no relation geometry
        losses.append((_relation(delta[a:b]) - _relation(aligned_delta[a:b])).pow(2).sum())
    return torch.stack(losses).mean() if losses else delta.sum() * 0


def output_kl(target: ModelAdapter, h_last: torch.Tensor, src_ids: torch.Tensor, src_logits: torch.Tensor,
              tau: float) -> torch.Tensor:
    """tau^2 KL(p_s || p_t): source from cached top-K logits (renormalised), target exact over V.

    h_last: (P, D_t) output of the last block; src_ids/src_logits: (P, K).
    """
    logp_t = torch.log_softmax(target.logit_lens(h_last).float() / tau, dim=-1).gather(-1, src_ids)
    logp_s = torch.log_softmax(src_logits.float() / tau, dim=-1)
    return tau * tau * (logp_s.exp() * (logp_s - logp_t)).sum(-1).mean()
