"""LaTen: location, unit attribution, exact injection footprint, validation-only selection."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.core.adapter import ModelAdapter
from pipeline.baselines import laten, laten_locate, runner
from pipeline.core.data import encode, read_jsonl
from pipeline.core.errors import PipelineError
from pipeline.core.loading import load_model, load_tokenizer


def test_answer_position_is_the_last_content_token(tiny_root):
    tok = load_tokenizer(str(tiny_root / "models" / "target"))
    record = {"id": "x", "messages": [{"role": "user", "content": "What is 12 + 7?"},
                                      {"role": "assistant", "content": "12 + 7 = 19. The answer is 19."}]}
    data = encode(tok, [record], 64)
    (t,), (w,) = laten_locate.answer_positions(tok, data)
    assert int(data.input_ids[0, t + 1]) == int(w) and bool(data.supervised[0, t])
    assert tok.decode([int(w)]).strip() in ("9", "19")  # the tiny BPE may split the number
    after = tok.decode(data.input_ids[0, t + 2:int(data.attention_mask[0].sum())], skip_special_tokens=True)
    assert after.strip() == "."  # only punctuation, whitespace and the end-of-turn marker follow


def test_value_rows_follow_grouped_query_attention():
    class Cfg:
        num_attention_heads, num_key_value_heads = 4, 2

    class Fake:
        config = Cfg()

    scores = torch.arange(8.0)  # 4 heads x head_dim 2; heads 0,1 read kv head 0, heads 2,3 kv head 1
    rows = laten_locate.value_rows(Fake(), scores)
    assert rows.tolist() == [0 + 2, 1 + 3, 4 + 6, 5 + 7]


def test_unit_importance_matches_one_unit_at_a_time(tiny_root, monkeypatch):
    model = load_model(str(tiny_root / "models" / "target"), "float32")
    adapter = ModelAdapter(model)
    gen = torch.Generator().manual_seed(0)
    residual, coeff = torch.randn(3, 48, generator=gen), torch.randn(3, 96, generator=gen)
    columns = adapter.linear(2, "down").weight.detach()  # (48, 96)
    w = torch.tensor([5, 17, 99])
    monkeypatch.setattr(laten_locate, "UNIT_CHUNK", 7)  # chunks that do not divide the unit count
    fast = laten_locate.unit_importance(adapter, residual, coeff, columns, w)
    with torch.no_grad():
        for i in (0, 6, 7, 50, 95):
            slow = torch.stack([laten_locate.log_prob(adapter, r + c[i] * columns[:, i], wi)
                                - laten_locate.log_prob(adapter, r, wi) for r, c, wi in zip(residual, coeff, w)]).mean()
            torch.testing.assert_close(fast[i], slow, rtol=1e-4, atol=1e-6)


def test_restricted_attribution_vocabulary(tiny_root):
    """The full vocabulary reproduces the exact scores; a small one stays close in ranking."""
    adapter = ModelAdapter(load_model(str(tiny_root / "models" / "target"), "float32"))
    gen = torch.Generator().manual_seed(1)
    residual, coeff = torch.randn(2, 48, generator=gen), torch.randn(2, 96, generator=gen)
    columns, w = adapter.linear(1, "down").weight.detach(), torch.tensor([3, 40])
    exact = laten_locate.unit_importance(adapter, residual, coeff, columns, w)
    assert laten_locate.readout_vocab(adapter, residual[0], w[0], adapter.vocab_size) is None
    vocab = laten_locate.readout_vocab(adapter, residual[0], w[0], 319)
    assert len(vocab) in (319, 320) and 3 in vocab.tolist()
    nearly = laten_locate.unit_importance(adapter, residual, coeff, columns, w, vocab_size=319)
    assert torch.corrcoef(torch.stack([exact, nearly]))[0, 1] > 0.99
    coarse = laten_locate.unit_importance(adapter, residual, coeff, columns, w, vocab_size=8)
    assert not torch.allclose(coarse, exact)


def run_laten(params, project, monkeypatch=None):
    ctx = runner.make_context(params, "laten", "toy", 0, project)
    out = runner.output_dir(project, "toy", "laten", 0)
    runner.run(ctx, out)
    return out, json.loads((out / "log.json").read_text())


def test_saved_model_differs_exactly_in_the_injected_units(params, project):
    out, log = run_laten(params, project)
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out).state_dict()
    target_model = load_model(str(project / "models" / "target"), "float32")
    adapter, target = ModelAdapter(target_model), target_model.state_dict()
    assert set(saved) == set(target)
    expected: dict[str, tuple[int, list[int]]] = {}
    for module, blocks in log["selection"].items():
        for k, units in blocks.items():
            expected[adapter.linear_weight_key(int(k), module)] = (0 if laten.ROWS[module] else 1, units)
    assert len(expected) == 4 * 4  # up/down/v/o in all 4 target blocks
    for key in target:
        diff = saved[key] != target[key]
        if key not in expected:
            assert not diff.any(), f"{key} changed but received no delta"
            continue
        dim, units = expected[key]
        touched = diff.any(dim=1 - dim).nonzero().flatten().tolist()  # changed rows (dim 0) or columns (dim 1)
        assert touched == units, key
    assert log["changed_elements"] > 0


def test_checkpoint_and_rate_are_chosen_on_validation_only(params, project, monkeypatch):
    task = project / "data" / "tasks" / "toy"
    (task / "evaluation.jsonl").write_text("this is not JSON: reading it would fail\n")
    validation_ids = {r["id"] for r in read_jsonl(task / "validation.jsonl")}
    seen: list[set[str]] = []
    real = laten.validation_loss

    def spy(adapter, data, batch_size, shard):
        seen.append(set(data.ids))
        return real(adapter, data, batch_size, shard)

    monkeypatch.setattr(laten, "validation_loss", spy)
    _, log = run_laten(params, project)
    assert seen and all(ids == validation_ids for ids in seen)
    table = log["validation"]
    assert {(row["step"], row["rate"]) for row in table} == {(3, 0.1), (3, 0.3), (6, 0.1), (6, 0.3)}
    best = min(table, key=lambda row: row["val_loss"])
    assert log["chosen"] == {"step": best["step"], "rate": best["rate"]}
    assert len(seen) == len(table) + 1  # plus the un-injected target, for reference


def test_vanishing_deltas_are_refused(params, project):
    params["baselines"]["save_dtype"] = "bfloat16"
    params["baselines"]["laten"]["train"] = {"lr": 1e-12}
    with pytest.raises(PipelineError) as err:
        run_laten(params, project)
    assert "vanish" in err.value.problem and "save_dtype" in err.value.fix
    assert not runner.output_dir(project, "toy", "laten", 0).exists()
