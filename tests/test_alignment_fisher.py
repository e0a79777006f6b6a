"""Alignment map and Fisher surrogate: the mathematical properties method.md promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.adapter import ModelAdapter
from pipeline.method.alignment import align, alignment_map, semantic_bases
from pipeline.method.capture import capture
from pipeline.core.data import encode
from pipeline.core.errors import PipelineError
from pipeline.method.fisher import FisherAccumulator, kl_to, surrogate, surrogate_closed_form
from pipeline.core.loading import load_model, load_tokenizer
from pipeline.tasks import builder


def test_bases_are_pinv_rows_and_reproduce_one_hot_logits():
    torch.manual_seed(0)
    w = torch.randn(50, 8)
    bases = semantic_bases(w, normalise=False)
    assert torch.allclose(bases, torch.linalg.pinv(w.T.double()).float(), atol=1e-5)
    # least-squares latent of e_i: its logits W b_i are the projection of e_i onto col(W)
    proj = w.double() @ torch.linalg.pinv(w.double())
    assert torch.allclose((w @ bases.T).double(), proj, atol=1e-5)


def test_map_equals_explicit_bases_product():
    torch.manual_seed(1)
    ws, wt = torch.randn(60, 12), torch.randn(60, 7)
    explicit = semantic_bases(wt).T @ semantic_bases(ws)
    assert torch.allclose(alignment_map(ws, wt), explicit.float(), atol=1e-5)


def _anisotropic_head(v: int, d: int, seed: int) -> torch.Tensor:
    """A (v, d) float32 LM head with singular values spread over three decades and token rows
    of very different norms: unlike a random Gaussian head, its bases B = pinv(W^T) have
    uneven row norms and A is far from c * I, so the wrong variants below are far off."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((v, d)))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w = (u * np.logspace(0, 3, d)) @ q.T
    return torch.from_numpy((w * rng.uniform(0.2, 5.0, (v, 1))).astype(np.float32))


def _unit_rows(b: np.ndarray) -> np.ndarray:
    return b / np.linalg.norm(b, axis=1, keepdims=True)


@pytest.mark.parametrize("widths", [(6, 6), (7, 5)], ids=["square", "wide-to-narrow"])
def test_alignment_map_and_align_match_numpy_pinv_on_anisotropic_heads(widths):
    """A = B^_t^T B^_s and h~ = B^_t^T (B^_s h / ||h||), expected from numpy's pinv in float64,
    the decomposition and recomposition done in two explicit steps (V coefficients).

    Rejects (each off by 50 % to 10^5 relative; checked by patching alignment.py): A = W_t^T W_s,
    A from un-normalised bases B_t^T B_s, and the transposed map (B^_s^T B^_t, or ``h @ A``
    in ``align``) where D_s = D_t gives it the right shape."""
    d_s, d_t = widths
    ws, wt = _anisotropic_head(40, d_s, 0), _anisotropic_head(40, d_t, 1)
    b_s = _unit_rows(np.linalg.pinv(ws.double().numpy().T))
    b_t = _unit_rows(np.linalg.pinv(wt.double().numpy().T))
    expected = b_t.T @ b_s
    amap = alignment_map(ws, wt)
    assert amap.shape == (d_t, d_s)
    np.testing.assert_allclose(amap.double().numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())

    h = np.random.default_rng(2).standard_normal((5, d_s))
    coeffs = b_s @ h.T / np.linalg.norm(h, axis=1)  # (V, 5): cosines to the source bases
    want = (b_t.T @ coeffs).T
    got = align(torch.from_numpy(h).float(), amap).double().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def _states(model_dir, n_layers):
    tok = load_tokenizer(str(model_dir))
    adapter = ModelAdapter(load_model(str(model_dir), "float32"))
    enc = encode(tok, builder("toy")({"transfer": 4}, 0).splits["transfer"], 48)
    got = capture(adapter, enc, list(range(n_layers + 1)), 8, 4, torch.float32, progress=False)
    return adapter, got.hidden


def test_self_alignment_keeps_direction_at_every_layer(tiny_pair):
    """method.md's sanity property on tiny random heads. It does not tell A apart from W^T W
    or un-normalised bases (random Gaussian heads make all of them close to c * I): the
    anisotropic test above does."""
    source, _ = tiny_pair
    adapter, hidden = _states(source, 6)
    amap = alignment_map(adapter.lm_head, adapter.lm_head)
    torch.manual_seed(0)
    random_map = semantic_bases(torch.randn_like(adapter.lm_head)).T @ semantic_bases(adapter.lm_head)
    for layer in range(1, 7):
        h = hidden[layer]
        own = torch.nn.functional.cosine_similarity(align(h, amap), h, dim=-1).mean()
        rnd = torch.nn.functional.cosine_similarity(align(h, random_map.float()), h, dim=-1).mean()
        assert own > 0.9, (layer, own)
        assert rnd.abs() < 0.3, (layer, rnd)


def test_map_refuses_heads_of_different_vocabularies():
    with pytest.raises(PipelineError, match="index-aligned"):
        alignment_map(torch.randn(50, 8), torch.randn(49, 8))


def test_surrogate_equals_closed_form_and_is_shift_invariant():
    torch.manual_seed(2)
    z_ref, z = torch.randn(5, 30), torch.randn(5, 30)
    p = torch.softmax(z_ref / 0.7, -1)
    fast = surrogate(z, z_ref, p, tau=0.7)
    assert torch.allclose(fast, surrogate_closed_form(z, z_ref, tau=0.7), atol=1e-6)
    assert torch.allclose(fast, surrogate(z + 3.0, z_ref - 1.5, p, tau=0.7), atol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("scale", [1e-2, 3e-2])
def test_surrogate_matches_kl_for_small_steps(scale, tau):
    """L_F ~ KL(p~ || softmax(z / tau)) with p~ = softmax(z~ / tau), for small steps at any tau.
    At tau != 1 this rejects d = z - z~ without the 1/tau (off by tau^2; checked by patching
    fisher.surrogate)."""
    torch.manual_seed(3)
    z_ref = 3 * torch.randn(8, 40, dtype=torch.float64)
    z = z_ref + scale * tau * torch.randn_like(z_ref)  # steps of `scale` in z / tau
    p = torch.softmax(z_ref / tau, -1)
    kl, quad = kl_to(z_ref, z, tau), surrogate(z, z_ref, p, tau)
    assert torch.allclose(quad, kl, rtol=5 * scale)  # error is third order in the step


def test_topk_statistics_equal_full_form_when_k_is_v():
    torch.manual_seed(4)
    z_ref, z = torch.randn(6, 25), torch.randn(6, 25)
    acc = FisherAccumulator(top_k=25, tau=1.0)
    acc.add(z_ref)
    st = acc.result()
    topk = surrogate(z.gather(-1, st.topk_ids), st.topk_logits, st.topk_probs)
    assert torch.allclose(topk, surrogate_closed_form(z, z_ref), atol=1e-5)
    p = torch.softmax(z_ref, -1)
    assert torch.allclose(st.diag_mean, (p * (1 - p)).mean(0), atol=1e-6)
    smaller = FisherAccumulator(top_k=5, tau=1.0)
    smaller.add(z_ref)
    assert smaller.result().topk_probs.sum(-1).allclose(torch.ones(6))
