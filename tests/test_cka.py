"""Debiased linear CKA: the invariances the analysis figures rely on, and safe edge cases."""

from __future__ import annotations

import pytest
import torch

from pipeline.method.cka import cka_matrix, linear_cka, prepare
from pipeline.core.errors import PipelineError


def reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Song et al.'s unbiased HSIC written out on raw (uncentred) Gram matrices."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    one = torch.ones(n, dtype=torch.float64)

    def hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        k, l = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
        return (torch.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))

    k, l = x @ x.T, y @ y.T
    return float(hsic(k, l) / (hsic(k, k) * hsic(l, l)).sqrt())


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 32, generator=g)
    y = x @ torch.randn(32, 20, generator=g) + 0.7 * torch.randn(60, 20, generator=g)  # related, other width
    return x, y


def test_matches_the_unbiased_hsic_formula(xy):
    x, y = xy
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), abs=1e-10)
    assert 0.2 < linear_cka(x, y) < 0.99


def test_identical_representations_have_cka_one(xy):
    x, _ = xy
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x.to(torch.bfloat16), x.to(torch.bfloat16)) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transforms_isotropic_scaling_and_offsets(xy):
    x, y = xy
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x.double() @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x.double() * 1e3, y.double() * 1e-3) == pytest.approx(base, abs=1e-10)
    # residual streams carry large constant components: the estimator ignores them
    assert linear_cka(x.double() + 1e4, y) == pytest.approx(base, abs=1e-8)


def test_not_invariant_to_anisotropic_scaling(xy):
    x, y = xy
    stretch = torch.ones(32)
    stretch[:4] = 50.0
    assert abs(linear_cka(x * stretch, y) - linear_cka(x, y)) > 1e-3


def test_debiasing_removes_the_wide_random_bias():
    # independent random features wider than the row count: biased CKA is large, debiased near 0
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 300, generator=g), torch.randn(40, 200, generator=g)
    assert abs(linear_cka(x, y)) < 0.15


def test_matrix_over_layers_of_different_widths(xy):
    x, y = xy
    rows = [prepare(x), prepare(y)]
    m = cka_matrix(rows, [y, x, torch.randn(60, 7)])
    assert len(m) == 2 and all(len(r) == 3 for r in m)
    assert m[0][1] == pytest.approx(1.0) and m[1][0] == pytest.approx(1.0)
    assert m[0][0] == pytest.approx(m[1][1]) == pytest.approx(linear_cka(x, y))


def test_degenerate_and_bad_inputs():
    const = torch.ones(10, 5)
    assert linear_cka(const, torch.randn(10, 3)) == 0.0  # no variance: 0, never NaN
    with pytest.raises(PipelineError, match="at least 4 rows"):
        linear_cka(torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(PipelineError, match="same inputs"):
        linear_cka(torch.randn(8, 5), torch.randn(9, 5))
    bad = torch.randn(8, 5)
    bad[2, 1] = float("nan")
    with pytest.raises(PipelineError, match="NaN"):
        linear_cka(bad, torch.randn(8, 5))
