"""Semantic bases and the training-free alignment map.

The semantic basis of vocabulary item i in a model is row i of ``B = pinv(W^T)`` (V x D),
the least-squares latent whose logits are the one-hot e_i; ``B^`` has unit rows. A source
state is decomposed into cosines with the source bases and recomposed over the target
bases with the same coefficients:

    a = B^_s h / ||h||,   h~ = B^_t^T a   =>   h~ = A h / ||h||,   A = B^_t^T B^_s  (D_t x D_s)

Both steps are linear, so only A is kept; no V-sized tensor per token ever exists. With
the thin SVD W = U S V^T, ``pinv(W^T) = U S^-1 V^T``, so A is assembled from the two SVDs
with one V-long contraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.core.errors import PipelineError


@dataclass
class ThinSVD:
    """W (V x D) = u @ diag(s) @ vh, keeping singular values above the cutoff."""

    u: torch.Tensor  # (V, r)
    s: torch.Tensor  # (r,)
    vh: torch.Tensor  # (r, D)


def thin_svd(weight: torch.Tensor, rtol: float | None = None) -> ThinSVD:
    """SVD of a tall LM head through its D x D Gram matrix in float64 (fast for V >> D).

    ``rtol`` drops singular values below rtol * s_max; None uses torch.linalg.pinv's default
    for float32 (max(V, D) * eps), the convention the paper's authors' code inherits.
    """
    w = weight.detach().to(torch.float64)
    v_rows, d = w.shape
    if v_rows < d:
        raise PipelineError(f"LM head is {v_rows} x {d}: fewer vocabulary rows than width",
                            "semantic bases need V >= D; check the model's output embeddings")
    evals, evecs = torch.linalg.eigh(w.T @ w)  # ascending; D x D, cheap
    s = evals.clamp(min=0).sqrt().flip(0)
    v = evecs.flip(1)
    cutoff = (max(v_rows, d) * torch.finfo(torch.float32).eps if rtol is None else rtol) * s[0]
    keep = s > cutoff
    s, v = s[keep], v[:, keep]
    u = torch.matmul(w, v, out=None) / s
    del w
    return ThinSVD(u=u, s=s, vh=v.T)


def semantic_bases(weight: torch.Tensor, rtol: float | None = None, normalise: bool = True) -> torch.Tensor:
    """(V, D) float32 rows of pinv(W^T); unit rows when ``normalise``. Materialises V x D:
    for analysis and small models; the pipeline only ever needs :func:`alignment_map`."""
    svd = thin_svd(weight, rtol)
    bases = (svd.u / svd.s) @ svd.vh
    if normalise:
        bases = bases / bases.norm(dim=1, keepdim=True).clamp(min=1e-30)
    return bases.to(torch.float32)


def _scaled_factors(svd: ThinSVD) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-row bases B^ = diag(1/n) U S^-1 V^T as (diag(1/n) U S^-1, V^T)."""
    left = svd.u / svd.s  # (V, r)
    norms = left.norm(dim=1, keepdim=True).clamp(min=1e-30)  # row norms of B (V^T is orthonormal)
    return left / norms, svd.vh


def alignment_map(source_head: torch.Tensor, target_head: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """A = B^_t^T B^_s, (D_t, D_s) float32, from the two LM heads (V x D_s, V x D_t)."""
    if source_head.shape[0] != target_head.shape[0]:
        raise PipelineError(
            f"LM heads have {source_head.shape[0]} vs {target_head.shape[0]} vocabulary rows",
            "SemAlign needs index-aligned vocabularies (same tokenizer and head size)",
        )
    ls, rs = _scaled_factors(thin_svd(source_head, rtol))
    lt, rt = _scaled_factors(thin_svd(target_head, rtol))
    core = lt.T @ ls  # (r_t, r_s): the single V-long contraction
    return (rt.T @ core @ rs).to(torch.float32)


def align(hidden: torch.Tensor, amap: torch.Tensor) -> torch.Tensor:
    """h~ = A h / ||h|| for a batch of source states. hidden: (..., D_s) -> (..., D_t) float32."""
    h = hidden.float()
    return (h @ amap.T) / h.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def mix_layers(h_a: torch.Tensor, h_b: torch.Tensor, lam: float) -> torch.Tensor:
    """The interpolate strategy's supervision (1 - lambda) h^(a) + lambda h^(b)."""
    return (1 - lam) * h_a.float() + lam * h_b.float()
