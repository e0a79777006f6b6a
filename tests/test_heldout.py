"""Held-out agreement per example, the paired bootstrap, the held-out curve along a chain, and
the frontier knobs that decide which blocks train on what (layer_from, layer_weight, interface)."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.adapter import ModelAdapter
from pipeline.method.curve import curve_points, heldout_curve
from pipeline.method.export import install_block
from pipeline.method.frontier import States, train_block
from pipeline.core.errors import PipelineError
from pipeline.evaluation.heldout import Agreement, agreement, difference, score
from pipeline.core.loading import load_model
from pipeline.evaluation.stats import paired_bootstrap
from test_method import stage_inputs


def explicit_kl_and_hits(model, enc, src_ids, src_logits):
    """Reference: the Hugging Face forward's logits, full softmax, one position at a time."""
    with torch.no_grad():
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[enc.supervised]
    kls, hits = [], []
    for p in range(logits.shape[0]):
        logp_t = torch.log_softmax(logits[p].double(), -1)
        logp_s = torch.log_softmax(src_logits[p].double(), -1)
        kls.append(float((logp_s.exp() * (logp_s - logp_t[src_ids[p]])).sum()))
        hits.append(int(logits[p].argmax()) == int(src_ids[p, 0]))
    return kls, hits


def test_agreement_per_example_matches_an_explicit_forward(tiny_pair):
    """Rejects: summing positions into the wrong example, top-1 against the source's k-th id,
    or a KL that skips the final norm (the reference is the HF forward, norm included)."""
    source, target = tiny_pair
    tgt, states, _, output, _, enc = stage_inputs(source, target, 1)
    with torch.no_grad():
        h_last = tgt.run_blocks(tgt.embed(enc.input_ids), enc.attention_mask, 1, tgt.n_layers)
    got = agreement(tgt, h_last[enc.supervised], output.topk_ids, output.topk_logits, enc.offsets())
    kls, hits = explicit_kl_and_hits(tgt.model, enc, output.topk_ids, output.topk_logits)
    offsets = enc.offsets().tolist()
    for i in range(len(enc.ids)):
        a, b = offsets[i], offsets[i + 1]
        assert float(got.kl[i]) == pytest.approx(sum(kls[a:b]), rel=1e-4, abs=1e-6)
        assert float(got.top1[i]) == sum(hits[a:b])
        assert int(got.positions[i]) == b - a
    assert got.mean_kl == pytest.approx(sum(kls) / len(kls), rel=1e-4)


def test_score_in_batches_matches_an_explicit_forward(tiny_pair):
    """The heldout stages' whole-model scoring, in batches of 2 over 3+ examples, against the HF
    forward (rejects concatenating batch outputs out of example order, dropping the last
    partial batch, or scoring the states before the last block)."""
    source, target = tiny_pair
    tgt, _, _, output, _, enc = stage_inputs(source, target, 1)
    got = score(tgt, enc, output.topk_ids, output.topk_logits, batch_size=2, progress=False)
    kls, hits = explicit_kl_and_hits(tgt.model, enc, output.topk_ids, output.topk_logits)
    offsets = enc.offsets().tolist()
    assert len(enc.ids) >= 3 and len(got.kl) == len(enc.ids)
    for i in range(len(enc.ids)):
        a, b = offsets[i], offsets[i + 1]
        assert float(got.kl[i]) == pytest.approx(sum(kls[a:b]), rel=1e-4, abs=1e-6)
        assert float(got.top1[i]) == sum(hits[a:b])
    with pytest.raises(PipelineError, match="re-run the extract stage"):
        score(tgt, enc, output.topk_ids[1:], output.topk_logits[1:], batch_size=2, progress=False)


def test_difference_to_the_reference_by_hand():
    """Two examples with 2 and 6 positions: reference KL sums 4 and 6 (mean 10/8), model 2 and 3
    (mean 5/8): difference -5/8; top-1 hits 1+3 vs 2+6: +4/8. Identical records give a zero
    interval; records scored on different examples are refused (rejects unweighted per-example
    means, -0.75 here, and a reference-minus-model sign)."""
    ref = Agreement(torch.tensor([4.0, 6.0], dtype=torch.float64), torch.tensor([1.0, 3.0], dtype=torch.float64),
                    torch.tensor([2, 6]))
    model = Agreement(torch.tensor([2.0, 3.0], dtype=torch.float64), torch.tensor([2.0, 6.0], dtype=torch.float64),
                      torch.tensor([2, 6]))
    d = difference(ref, model, n_boot=500)
    assert d["kl_diff"] == pytest.approx(-5 / 8) and d["top1_diff"] == pytest.approx(4 / 8)
    assert d["kl_diff_low"] <= d["kl_diff"] <= d["kl_diff_high"] and (d["examples"], d["positions"]) == (2, 8)
    same = difference(ref, ref, n_boot=200)
    assert same["kl_diff"] == same["kl_diff_low"] == same["kl_diff_high"] == 0
    other = Agreement(model.kl, model.top1, torch.tensor([3, 5]))
    with pytest.raises(PipelineError, match="same examples"):
        difference(ref, other)


def test_paired_bootstrap_by_hand():
    """Point difference of position-weighted means, computed by hand; identical models give a
    zero-width interval; a consistent shift on every item gives an interval excluding zero,
    while the same shift on one item of many does not (rejects an unpaired or per-position
    resampling, which would not see the pairing)."""
    a, b, d = [2.0, 4.0, 6.0], [1.0, 3.0, 6.0], [2.0, 2.0, 4.0]
    res = paired_bootstrap(a, b, d, n_boot=2000)
    assert res["diff"] == pytest.approx((10 - 12) / 8)
    same = paired_bootstrap(a, a, d, n_boot=500)
    assert same["diff"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    rng = torch.Generator().manual_seed(0)
    base = (torch.rand(40, generator=rng) * 10).tolist()
    shifted = [x - 0.5 for x in base]  # every item better by 0.5 per position (den 1)
    res = paired_bootstrap(base, shifted, [1.0] * 40, n_boot=2000)
    assert res["ci_high"] < 0 and res["p_other_sign"] < 0.01
    one = list(base)
    one[0] -= 0.5 * 40 / 40  # the same total change... on one item only is still a shift of 0.0125 on average
    res_one = paired_bootstrap(base, one, [1.0] * 40, n_boot=2000)
    assert res_one["ci_low"] < 0 <= res_one["ci_high"] or res_one["ci_high"] == pytest.approx(0, abs=1e-12)


def test_curve_points():
    assert curve_points(24, 4) == [0, 4, 8, 12, 16, 20, 24]
    assert curve_points(5, 2) == [0, 2, 4, 5]
    assert curve_points(3, 1) == [0, 1, 2, 3]


def test_curve_ends_at_the_exported_model_and_starts_at_the_untouched_target(tiny_pair):
    """Point 0 is the untouched target and point L the model with every trained block; a middle
    point k has blocks 1..k trained and the rest original (rejects a curve that installs all
    blocks first, or runs the trained block k+1 at point k)."""
    source, target = tiny_pair
    tgt, states, _, output, cfg, enc = stage_inputs(source, target, 1)
    blocks = {}
    for k in range(1, tgt.n_layers + 1):
        _, _, targets, _, _, _ = stage_inputs(source, target, k)
        result = train_block(tgt, k, states, targets, output, cfg, progress=False)
        blocks[k] = result.block_state
        states = States(result.states_out, states.attention_mask, states.supervised)
    n = tgt.n_layers
    fresh = ModelAdapter(load_model(str(target), "float32"))
    pts = heldout_curve(fresh, enc, blocks.__getitem__, output.topk_ids, output.topk_logits, [0, 2, n],
                        batch_size=4, progress=False)

    def reference(upto: int):
        model = ModelAdapter(load_model(str(target), "float32"))
        for k in range(1, upto + 1):
            install_block(model, k, blocks[k])
        with torch.no_grad():
            h = model.run_blocks(model.embed(enc.input_ids), enc.attention_mask, 1, n)
        return agreement(model, h[enc.supervised], output.topk_ids, output.topk_logits, enc.offsets())

    for k in (0, 2, n):
        assert torch.allclose(pts[k].kl, reference(k).kl, rtol=1e-4, atol=1e-6), k
    assert not torch.allclose(pts[2].kl, pts[n].kl)


def test_blocks_below_layer_from_keep_their_weights(tiny_pair):
    """A block with no objective (below frontier.layer_from, no output KL) is not trained: its
    weights are bit-identical and its output is the original block's (rejects training it on
    the layer objective anyway, or on a zero loss with weight decay)."""
    source, target = tiny_pair
    tgt, states, targets, output, cfg, _ = stage_inputs(source, target, 1, {"layer_from": 2, "weight_decay": 0.1})
    before = {n: t.clone() for n, t in tgt.block(1).state_dict().items()}
    result = train_block(tgt, 1, states, None, output, cfg, progress=False)
    assert all(torch.equal(result.block_state[n], before[n]) for n in before)
    assert result.losses == []
    tgt2, states2, targets2, output2, cfg2, _ = stage_inputs(source, target, 2, {"layer_from": 2})
    trained = train_block(tgt2, 2, states2, targets2, output2, cfg2, progress=False)
    assert len(trained.losses) == cfg2.steps


def test_layer_weight_scales_the_layer_objective(tiny_pair):
    """The stage's objective is layer_weight x the layer objective (+ beta x KL): rejects a weight
    that is read but not applied."""
    source, target = tiny_pair
    objs = {}
    for w in (1.0, 0.25):
        tgt, states, targets, output, cfg, _ = stage_inputs(source, target, 2, {"layer_weight": w, "steps": 0})
        objs[w] = train_block(tgt, 2, states, targets, output, cfg, progress=False).objective_before
    assert objs[0.25] == pytest.approx(0.25 * objs[1.0], rel=1e-5)


def test_residual_interface_reads_the_block_contribution(tiny_pair):
    """With fisher.interface = residual the layer objective of block k is computed on
    h^(k) - h^(k-1) against the aligned source residual h_s^(l(k)) - h_s^(l(k-1)); rejects
    an implementation that still reads h^(k) (its objective differs)."""
    from pipeline.method.objectives import cosine_loss
    from pipeline.method.supervision import aligned_residual

    source, target = tiny_pair
    tgt, states, targets, output, cfg, enc = stage_inputs(source, target, 2, {"objective": "cosine",
                                                                              "interface": "residual", "steps": 0,
                                                                              "batch_size": 64})
    got = train_block(tgt, 2, states, targets, output, cfg, progress=False).objective_before
    with torch.no_grad():
        h_out = tgt.run_blocks(states.hidden, states.attention_mask, 2, 2)
    mask = states.supervised
    expected = float(cosine_loss((h_out - states.hidden)[mask], targets.aligned))
    wrong = float(cosine_loss(h_out[mask], targets.aligned))
    assert got == pytest.approx(expected, rel=1e-5)
    assert abs(expected - wrong) > 1e-3
    # the aligned residual is the recomposed difference of the paired source states
    src = ModelAdapter(load_model(str(source), "float32"))
    from pipeline.method.alignment import align, alignment_map
    from pipeline.method.capture import capture
    from pipeline.method.pairing import pair_layers

    got_src = capture(src, enc, list(range(src.n_layers + 1)), 16, 4, torch.float32, progress=False)
    pairing = pair_layers("floor", src.n_layers, tgt.n_layers)
    amap = alignment_map(src.lm_head, tgt.lm_head)
    hs = got_src.hidden
    l1, l2 = pairing["pairs"][0], pairing["pairs"][1]
    assert torch.allclose(aligned_residual(pairing, 2, hs.__getitem__, amap), align(hs[l2] - hs[l1], amap), atol=1e-6)
    assert torch.allclose(aligned_residual(pairing, 1, hs.__getitem__, amap), align(hs[l1] - hs[0], amap), atol=1e-6)


def test_block_numbers_from_the_end():
    """-n names the n-th block from the end, so a setting carries over to another depth;
    rejects an off-by-one (-1 must be the last block, -4 of 24 block 21)."""
    from pipeline.core.chain import block_number
    from pipeline.method.frontier import FrontierConfig

    cfg = FrontierConfig(kl_from=-4, layer_from=-4)
    assert [k for k in range(1, 25) if cfg.has_output_kl(k, 24)] == [21, 22, 23, 24]
    assert [k for k in range(1, 25) if cfg.has_layer_objective(k, 24)] == [21, 22, 23]
    assert block_number(-1, 32) == 32 and block_number(5, 32) == 5
    assert [k for k in range(1, 25) if FrontierConfig(kl_from=0).has_output_kl(k, 24)] == [24]
    assert not any(FrontierConfig(layer_weight=0.0).has_layer_objective(k, 24) for k in range(1, 25))


def test_curve_points_before_the_first_changed_block_are_the_untouched_target(tiny_pair):
    """A chain that leaves block 1 as it is (layer_from 2): point 1 is point 0 exactly, and the
    points after it are recomputed (rejects a shortcut that also reuses point 0 once a block
    has changed)."""
    source, target = tiny_pair
    tgt, states, _, output, cfg, enc = stage_inputs(source, target, 1, {"layer_from": 2})
    blocks = {}
    for k in range(1, tgt.n_layers + 1):
        _, _, targets, _, _, _ = stage_inputs(source, target, k, {"layer_from": 2})
        result = train_block(tgt, k, states, targets if k >= 2 else None, output, cfg, progress=False)
        blocks[k] = result.block_state
        states = States(result.states_out, states.attention_mask, states.supervised)
    fresh = ModelAdapter(load_model(str(target), "float32"))
    pts = heldout_curve(fresh, enc, blocks.__getitem__, output.topk_ids, output.topk_logits,
                        [1, 2, tgt.n_layers], batch_size=4, progress=False)
    assert torch.equal(pts[1].kl, pts[0].kl)
    assert not torch.allclose(pts[2].kl, pts[0].kl)
