"""The Fisher-weighted quadratic surrogate and the statistics it needs.

With aligned reference logits z~ and p~ = softmax(z~ / tau) (a constant), the Fisher of
the categorical distribution is F = diag(p~) - p~ p~^T and the surrogate of
KL(p~ || softmax(z / tau)) around z = z~ is

    L_F = 1/2 d^T F d = 1/2 (sum_v p~_v d_v^2 - (sum_v p~_v d_v)^2),   d = (z - z~) / tau,

i.e. half the p~-variance of d: O(V) per position, or O(K) on the top-K of p~
(renormalised), which is exact when K = V. It is invariant to shifting either logit vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def surrogate(z: torch.Tensor, z_ref: torch.Tensor, p_ref: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-position 1/2 d^T F d. z, z_ref, p_ref: (P, K) over the same K ids -> (P,)."""
    d = (z - z_ref) / tau
    mean = (p_ref * d).sum(-1)
    return 0.5 * ((p_ref * d * d).sum(-1) - mean * mean)


def surrogate_closed_form(z: torch.Tensor, z_ref: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """The same quantity with the explicit Fisher matrix (reference for tests). (P, V) -> (P,)."""
    p = torch.softmax(z_ref / tau, dim=-1)
    fisher = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    d = ((z - z_ref) / tau).unsqueeze(-1)
    return 0.5 * (d.transpose(-1, -2) @ fisher @ d).squeeze(-1).squeeze(-1)


def kl_to(z_ref: torch.Tensor, z: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL(softmax(z_ref/tau) || softmax(z/tau)) per position (the quantity L_F approximates)."""
    logp_ref = torch.log_softmax(z_ref / tau, dim=-1)
    return (logp_ref.exp() * (logp_ref - torch.log_softmax(z / tau, dim=-1))).sum(-1)


@dataclass
class FisherStats:
    """Per supervised position, the top-K of p~: ids (P, K), aligned logits (P, K),
    renormalised probabilities (P, K); and the position mean of p~(1 - p~) over V."""

    topk_ids: torch.Tensor
    topk_logits: torch.Tensor
    topk_probs: torch.Tensor
    diag_mean: torch.Tensor


class FisherAccumulator:
    """Builds FisherStats chunk by chunk so V-sized logits exist for one chunk at a time."""

    def __init__(self, top_k: int, tau: float) -> None:
        self.top_k, self.tau = top_k, tau
        self.ids: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []
        self.diag_sum: torch.Tensor | None = None
        self.count = 0

    def add(self, z_ref: torch.Tensor) -> None:
        """z_ref: (P_chunk, V) aligned logits."""
        z_ref = z_ref.float()
        p = torch.softmax(z_ref / self.tau, dim=-1)
        diag = (p * (1 - p)).sum(0).double()
        self.diag_sum = diag if self.diag_sum is None else self.diag_sum + diag
        self.count += z_ref.shape[0]
        k = min(self.top_k, z_ref.shape[-1])
        probs, ids = p.topk(k, dim=-1)
        self.ids.append(ids)
        self.logits.append(z_ref.gather(-1, ids))
        self.probs.append(probs / probs.sum(-1, keepdim=True))

    def result(self) -> FisherStats:
        return FisherStats(
            topk_ids=torch.cat(self.ids),
            topk_logits=torch.cat(self.logits),
            topk_probs=torch.cat(self.probs),
            diag_mean=(self.diag_sum / max(self.count, 1)).float(),
        )
