"""Capture, attribution, frontier training and export on tiny Qwen2 and Llama pairs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline.adapter import ModelAdapter
from pipeline.alignment import alignment_map
from pipeline.attribution import layer_scores, per_example_loss
from pipeline.capture import capture
from pipeline.data import encode
from pipeline.export import export_model
from pipeline.frontier import FrontierConfig, LayerTargets, OutputTargets, States, embed_states, train_block
from pipeline.loading import load_model, load_tokenizer
from pipeline.pairing import pair_layers
from pipeline.supervision import aligned_state, fisher_stats
from pipeline.tasks import builder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["qwen2", "llama"])
def pair(request, tiny_pair, tiny_llama_pair):
    return tiny_pair if request.param == "qwen2" else tiny_llama_pair


def encoded(model_dir, split="transfer", n=6):
    records = builder("toy")({"transfer": n, "attribution": n}, 0).splits[split]
    return encode(load_tokenizer(str(model_dir)), records, 48)


def test_capture_matches_a_plain_forward(pair):
    source, _ = pair
    adapter = ModelAdapter(load_model(str(source), "float32"))
    enc = encoded(source)
    got = capture(adapter, enc, [0, 2, 6], top_k=10, batch_size=4, store_dtype=torch.float32, progress=False)
    with torch.no_grad():
        out = adapter.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
    mask = enc.supervised
    assert got.hidden[0].shape == (enc.n_supervised, adapter.width)
    assert torch.allclose(got.hidden[2], out.hidden_states[2][mask], atol=1e-5)
    assert torch.allclose(got.topk_logits, out.logits[mask].topk(10, -1).values, atol=1e-4)


def test_one_pass_attribution_equals_per_layer_reference(pair):
    source, _ = pair
    adapter = ModelAdapter(load_model(str(source), "float32"))
    enc = encoded(source, "attribution", 4)
    fast = layer_scores(adapter, enc, batch_size=3, how="frobenius", progress=False)
    # reference: one forward/backward per layer and per example, gradient taken directly
    ref = []
    for layer in range(1, adapter.n_layers + 1):
        total = 0.0
        for i in range(len(enc.ids)):
            kept = {}
            handle = adapter.block(layer).register_forward_hook(lambda m, a, o: kept.setdefault("h", o))
            out = adapter.model(input_ids=enc.input_ids[i:i + 1], attention_mask=enc.attention_mask[i:i + 1])
            handle.remove()
            loss = per_example_loss(out.logits, enc.input_ids[i:i + 1], enc.supervised[i:i + 1]).sum()
            (grad,) = torch.autograd.grad(loss, kept["h"])
            total += float((grad * kept["h"]).detach().norm())
        ref.append(total / len(enc.ids))
    assert fast == pytest.approx(ref, rel=1e-4)
    assert all(p.grad is None for p in adapter.model.parameters())


def stage_inputs(source, target, k, cfg_kwargs=None):
    """Everything stage k needs, computed the way the DVC stages compute it."""
    src = ModelAdapter(load_model(str(source), "float32"))
    tgt = ModelAdapter(load_model(str(target), "float32"))
    enc = encoded(source)
    got = capture(src, enc, list(range(src.n_layers + 1)), 16, 4, torch.float32, progress=False)
    pairing = pair_layers("floor", src.n_layers, tgt.n_layers)
    amap = alignment_map(src.lm_head, tgt.lm_head)
    h = embed_states(tgt, enc.input_ids)
    if k > 1:
        with torch.no_grad():
            h = tgt.run_blocks(h, enc.attention_mask, 1, k - 1)
    states = States(h, enc.attention_mask, enc.supervised)
    targets = None
    if k < tgt.n_layers:
        aligned = aligned_state(pairing, k, got.hidden.__getitem__, amap)
        st = fisher_stats(tgt, aligned, 16, 1.0)
        prev = aligned_state(pairing, k - 1, got.hidden.__getitem__, amap) if k > 1 else aligned
        targets = LayerTargets(st.topk_ids, st.topk_logits, st.topk_probs, aligned, prev)
    output = OutputTargets(got.topk_ids, got.topk_logits)
    cfg = FrontierConfig(steps=6, lr=3e-3, batch_size=3, **(cfg_kwargs or {}))
    return tgt, states, targets, output, cfg, enc


@pytest.mark.parametrize("k", [1, 2, 4])
def test_frontier_changes_only_block_k_and_lowers_its_objective(pair, k):
    source, target = pair
    tgt, states, targets, output, cfg, _ = stage_inputs(source, target, k)
    before = {n: t.clone() for n, t in tgt.model.state_dict().items()}
    result = train_block(tgt, k, states, targets, output, cfg, progress=False)
    assert result.objective_after < result.objective_before
    original = ModelAdapter(load_model(str(target), "float32"))
    from pipeline.export import install_block

    install_block(original, k, result.block_state)
    prefix = original.block_prefix(k)
    for name, tensor in original.model.state_dict().items():
        if name.startswith(prefix):
            continue
        assert torch.equal(tensor, before[name]), name
    assert any(not torch.equal(t, before[prefix + n]) for n, t in result.block_state.items())


@pytest.mark.parametrize("objective", ["cosine", "relation"])
def test_ablation_objectives_train(tiny_pair, objective):
    source, target = tiny_pair
    tgt, states, targets, output, cfg, _ = stage_inputs(source, target, 2, {"objective": objective})
    result = train_block(tgt, 2, states, targets, output, cfg, progress=False)
    assert result.objective_after < result.objective_before


def test_lora_block_is_merged_into_plain_weights(tiny_pair):
    source, target = tiny_pair
    tgt, states, targets, output, cfg, _ = stage_inputs(source, target, 2, {"trainable": "lora", "lora_r": 4})
    names = set(tgt.block(2).state_dict())
    result = train_block(tgt, 2, states, targets, output, cfg, progress=False)
    assert set(result.block_state) == names
    assert result.objective_after < result.objective_before


def test_kl_every_stage_adds_the_output_term(tiny_pair):
    source, target = tiny_pair
    runs = {}
    for flag in (False, True):
        tgt, states, targets, output, cfg, _ = stage_inputs(source, target, 1, {"kl_every_stage": flag})
        runs[flag] = train_block(tgt, 1, states, targets, output, cfg, progress=False)
    assert runs[True].objective_before > runs[False].objective_before
    assert runs[True].objective_after < runs[True].objective_before


def test_exported_model_reproduces_the_chain(tmp_path, pair):
    """Run the whole chain in the library, export, reload: same states as the chain's."""
    source, target = pair
    tgt, states, _, output, cfg, enc = stage_inputs(source, target, 1)
    blocks = {}
    for k in range(1, tgt.n_layers + 1):
        _, _, targets, _, _, _ = stage_inputs(source, target, k)
        result = train_block(tgt, k, states, targets, output, cfg, progress=False)
        blocks[k] = result.block_state
        states = States(result.states_out, states.attention_mask, states.supervised)
    fresh = ModelAdapter(load_model(str(target), "float32"))
    export_model(fresh, load_tokenizer(str(target)), blocks, tmp_path / "model")
    reloaded = ModelAdapter(load_model(str(tmp_path / "model"), "float32"))
    with torch.no_grad():
        h = reloaded.run_blocks(reloaded.embed(enc.input_ids), enc.attention_mask, 1, reloaded.n_layers)
    live = enc.attention_mask.bool()
    assert torch.allclose(h[live], states.hidden[live], atol=1e-4)


def test_partial_load_computes_like_the_full_model_and_leaves_other_blocks_unloaded(pair):
    from pipeline.errors import PipelineError
    from pipeline.loading import load_model_blocks

    _, target = pair
    full = ModelAdapter(load_model(str(target), "float32"))
    part = ModelAdapter(load_model_blocks(target, "float32", 2, 2))
    torch.manual_seed(0)
    h = torch.randn(2, 5, full.width)
    attn = torch.ones(2, 5, dtype=torch.long)
    assert torch.equal(part.run_blocks(h, attn, 2, 2), full.run_blocks(h, attn, 2, 2))
    assert torch.equal(part.logit_lens(h), full.logit_lens(h))
    assert torch.equal(part.embed(torch.tensor([[1, 2, 3]])), full.embed(torch.tensor([[1, 2, 3]])))
    assert part.block(1).mlp.up_proj.weight.is_meta and not part.block(2).mlp.up_proj.weight.is_meta
    tail = ModelAdapter(load_model_blocks(target, "float32", 2))
    assert not tail.block(tail.n_layers).mlp.up_proj.weight.is_meta
    with pytest.raises(PipelineError, match="outside the model"):
        load_model_blocks(target, "float32", full.n_layers + 1)


def test_partial_load_of_a_tied_model_shares_the_embedding(tmp_path):
    from pipeline.loading import load_model_blocks
    from pipeline.tiny import build_model

    build_model("qwen2", 320, 3, 32, 4, 2, tie=True).save_pretrained(tmp_path)
    part = ModelAdapter(load_model_blocks(tmp_path, "float32", 1, 1))
    full = ModelAdapter(load_model(str(tmp_path), "float32"))
    assert part.lm_head.data_ptr() == part.embedding.weight.data_ptr()
    assert torch.equal(part.lm_head, full.lm_head)



def test_fisher_stage_and_frontier_share_one_temperature(tiny_pair, tmp_path, monkeypatch):
    """tau != 1 end to end: the fisher stage script builds p~ at params' fisher.tau = 2; the
    frontier stage's reader loads it and frontier_config and train_block (0 steps: the
    objective before training) score block k. The source states are block k's own outputs
    plus a small step (identity alignment map; the final norm ignores the 1/||h||), so the
    surrogate must equal KL(p~ || softmax(z / tau)) over the full vocabulary (K = V).

    Rejects (checked by patching) a frontier that scales d by a temperature of its own (the
    old frontier.tau, 1.0: off by tau^2 = 4) and a fisher stage that builds p~ at tau 1.
    The LM head is scaled up so that p~ is peaked and tau matters."""
    import subprocess
    import sys

    import yaml

    from pipeline import layout
    from pipeline.artifacts import load_tensors, save_tensors, write_json
    from pipeline.fisher import kl_to
    from pipeline.frontier import frontier_config
    from stages.frontier import layer_targets

    _, target = tiny_pair
    tgt = ModelAdapter(load_model(str(target), "float32"))
    with torch.no_grad():
        tgt.lm_head.mul_(30)
    tgt.model.save_pretrained(tmp_path / "models/target")
    enc = encoded(target)
    with torch.no_grad():
        outs = tgt.run_blocks(embed_states(tgt, enc.input_ids), enc.attention_mask, 1, tgt.n_layers, collect=True)
    torch.manual_seed(0)
    source = tmp_path / layout.source_dir("toy") / "transfer"
    for layer, h in enumerate([embed_states(tgt, enc.input_ids)] + outs):
        h = h[enc.supervised].detach()
        step = 0.01 * h.norm(dim=-1, keepdim=True) * torch.randn_like(h) / h.shape[-1] ** 0.5
        save_tensors(layout.layer_file(source, layer), {"hidden": h + step})
    n = tgt.n_layers
    write_json(tmp_path / layout.pairing_file("toy"), {"strategy": "floor", "pairs": list(range(1, n + 1)),
                                                      "n_source": n, "n_target": n})
    save_tensors(tmp_path / layout.alignment_dir() / "map.safetensors", {"map": torch.eye(tgt.width)})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"] = ["toy"]
    params["models"]["compute_dtype"] = "float32"
    params["extract"]["hidden_dtype"] = "float32"
    params["fisher"].update(tau=2.0, top_k=tgt.vocab_size)
    params["frontier"].update(steps=0, batch_size=16)  # one batch: the mean over all positions
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = subprocess.run([sys.executable, "-m", "stages.fisher", "toy"], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"})
    assert run.returncode == 0, run.stderr

    k = 2
    monkeypatch.chdir(tmp_path)
    cfg = frontier_config(params, seed=0)
    targets = layer_targets("toy", k, False, cfg.tau)
    result = train_block(tgt, k, States(outs[k - 2], enc.attention_mask, enc.supervised), targets, None, cfg,
                         progress=False)
    aligned = load_tensors(layout.layer_file(layout.fisher_dir("toy"), k))["aligned"]
    with torch.no_grad():
        kl = kl_to(tgt.logit_lens(aligned), tgt.logit_lens(outs[k - 1][enc.supervised]), 2.0).mean()
    assert result.objective_before == pytest.approx(float(kl), rel=0.02)
