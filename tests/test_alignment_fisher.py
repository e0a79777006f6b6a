"""Alignment map and Fisher surrogate: the mathematical properties method.md promises."""

from __future__ import annotations

import pytest
import torch

from pipeline.adapter import ModelAdapter
from pipeline.alignment import align, alignment_map, semantic_bases
from pipeline.capture import capture
from pipeline.data import encode
from pipeline.errors import PipelineError
from pipeline.fisher import FisherAccumulator, kl_to, surrogate, surrogate_closed_form
from pipeline.loading import load_model, load_tokenizer
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


def _states(model_dir, n_layers):
    tok = load_tokenizer(str(model_dir))
    adapter = ModelAdapter(load_model(str(model_dir), "float32"))
    enc = encode(tok, builder("toy")({"transfer": 4}, 0).splits["transfer"], 48)
    got = capture(adapter, enc, list(range(n_layers + 1)), 8, 4, torch.float32, progress=False)
    return adapter, got.hidden


def test_self_alignment_keeps_direction_at_every_layer(tiny_pair):
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


@pytest.mark.parametrize("scale", [1e-2, 3e-2])
def test_surrogate_matches_kl_for_small_steps(scale):
    torch.manual_seed(3)
    z_ref = torch.randn(8, 40, dtype=torch.float64)
    z = z_ref + scale * torch.randn_like(z_ref)
    p = torch.softmax(z_ref, -1)
    kl, quad = kl_to(z_ref, z), surrogate(z, z_ref, p)
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
