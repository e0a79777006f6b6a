"""The training objectives of the baselines, all on supervised (prediction) positions.

Shapes: P supervised positions, V vocabulary rows, K kept source logits per position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.core.errors import PipelineError

HIDDEN_LOSSES = ("cosine", "mse")


def next_tokens(input_ids: torch.Tensor, supervised: torch.Tensor) -> torch.Tensor:
    """(P,) the token each supervised position predicts (position t predicts token t + 1)."""
    return input_ids[:, 1:][supervised[:, :-1]]


def supervised_ce(logits: torch.Tensor, input_ids: torch.Tensor, supervised: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (P, V) logits against the answer tokens they predict."""
    return F.cross_entropy(logits.float(), next_tokens(input_ids, supervised))


def topk_forward_kl(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(p_source || p_target) at temperature T, mean over positions.

    The source distribution is the softmax of its top-K logits (renormalised over the K kept
    tokens); the target's log-probabilities are the full-vocabulary ones read at those ids, so
    with K = V this is exactly the KL of the two output distributions, and with K < V it
    is still >= 0 (the target's mass on K tokens is at most 1).
    """
    if temperature <= 0:
        raise PipelineError(f"KD temperature {temperature} must be positive", "set a temperature > 0")
    t = float(temperature)
    log_p = F.log_softmax(topk_logits.float() / t, dim=-1)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, topk_ids)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * t * t


def hidden_loss(projected: torch.Tensor, source: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between projected target states and source states, both (P, D_s)."""
    source = source.to(projected.dtype)
    if kind == "cosine":
        return (1 - F.cosine_similarity(projected, source, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(projected, source)
    raise PipelineError(f"unknown hidden-state loss {kind!r}", f"set baselines.hidden_kd.loss to one of {HIDDEN_LOSSES}")
