"""Linear CKA between two sets of representations of the same inputs, debiased.

CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels K = XXᵀ, L = YYᵀ
(Kornblith et al., 2019). HSIC is the unbiased estimator of Song et al. (2012), which
removes the upward bias the plain (centred-Gram) estimator has when the number of rows n
is not much larger than the widths — the usual case for hidden states of a few hundred
supervised positions against widths in the thousands. With K̃ = K with its diagonal zeroed:

    HSIC(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃L̃1] / (n(n-3))

Rows are examples (here: supervised token positions); widths may differ. Each input is
centred per column and scaled to unit Frobenius norm in float64 before its Gram matrix is
formed: the estimator is invariant to both, and it keeps massive-activation dimensions of
LLM residual streams from swamping the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from pipeline.core.errors import PipelineError

MIN_ROWS = 4  # the unbiased estimator divides by n - 3


@dataclass(frozen=True)
class Prepared:
    """What one representation contributes to every HSIC it takes part in."""

    gram: torch.Tensor  # (n, n) K̃: linear Gram of the normalised rows, zero diagonal, float64
    row_sums: torch.Tensor  # (n,) K̃1
    total: float  # 1ᵀK̃1
    self_hsic: float  # HSIC(K, K)

    @property
    def n(self) -> int:
        return self.gram.shape[0]


def _check_rows(x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise PipelineError(f"CKA needs a (rows, width) matrix, got shape {tuple(x.shape)}",
                            "flatten the positions into rows first")
    if x.shape[0] < MIN_ROWS:
        raise PipelineError(f"CKA needs at least {MIN_ROWS} rows, got {x.shape[0]}",
                            "use a larger validation split (tasks_config.TASK.validation)")
    if not torch.isfinite(x).all():
        raise PipelineError("CKA input has NaN or Inf values", "re-run the stage that wrote these hidden states")


def _hsic(a: torch.Tensor, a_rows: torch.Tensor, a_total: float,
          b: torch.Tensor, b_rows: torch.Tensor, b_total: float) -> float:
    n = a.shape[0]
    trace = float((a * b).sum())  # tr(K̃L̃) for symmetric matrices
    return (trace + a_total * b_total / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(a_rows @ b_rows)) / (n * (n - 3))


def prepare(x: torch.Tensor) -> Prepared:
    """Centre, normalise and form the zero-diagonal Gram matrix of one (n, width) representation."""
    _check_rows(x)
    x = x.detach().to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    norm = x.norm()
    if norm > 0:
        x = x / norm
    gram = x @ x.T
    gram.fill_diagonal_(0.0)
    rows = gram.sum(dim=1)
    total = float(rows.sum())
    return Prepared(gram, rows, total, _hsic(gram, rows, total, gram, rows, total))


def cka(a: Prepared, b: Prepared) -> float:
    """Debiased linear CKA of two prepared representations of the same n rows.

    A representation without measurable variance (constant rows, or a non-positive unbiased
    self-HSIC on very few rows) shares no structure with anything: its CKA is 0, not NaN,
    so plot files and metrics stay valid JSON.
    """
    if a.n != b.n:
        raise PipelineError(f"CKA compares the same inputs, got {a.n} and {b.n} rows",
                            "pass hidden states of the same tokens (same positions, same order)")
    if a.self_hsic <= 0.0 or b.self_hsic <= 0.0:
        return 0.0
    return _hsic(a.gram, a.row_sums, a.total, b.gram, b.row_sums, b.total) / (a.self_hsic * b.self_hsic) ** 0.5


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Debiased linear CKA of (n, p) and (n, q) matrices whose rows are the same inputs."""
    return cka(prepare(x), prepare(y))


def cka_matrix(rows: Sequence[Prepared], columns: Iterable[torch.Tensor]) -> list[list[float]]:
    """result[i][j] = CKA(rows[i], columns[j]).

    The row side is prepared once by the caller (it is reused across calls, e.g. the source
    layers against the target before and after transfer); columns are prepared one at a time,
    so at most len(rows) + 1 Gram matrices are held.
    """
    out: list[list[float]] = [[] for _ in rows]
    for col in columns:
        prepared = prepare(col)
        for i, row in enumerate(rows):
            out[i].append(cka(row, prepared))
    return out
