"""Batched left-padded generation == per-prompt greedy generation; stop rules cut outputs."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import tiny_model_dir

from pipeline.core.data import render_prompt
from pipeline.evaluation.generation import cut, generate, greedy_config
from pipeline.core.loading import load_model, load_tokenizer

QUESTIONS = ["What is 12 + 7?", "def add(a, b):", "Hi",
             "The following is a multiple choice question about physics. Answer: B and more words to be long",
             "Question: Tom has 3 apples and buys 4 more. How many apples?"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return load_model(str(d), "float32"), load_tokenizer(str(d))


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    return [render_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]


def _one_by_one(model, tok, prompt: str, max_new: int) -> str:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, generation_config=greedy_config(model, tok, max_new))
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    eos = set(greedy_config(model, tok, max_new).eos_token_id)
    end = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
    return tok.decode(new[:end], skip_special_tokens=True)


def test_batched_left_padded_equals_unpadded_per_prompt(tiny, prompts):
    model, tok = tiny
    lengths = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) > 2  # rows really need padding
    run = generate(model, tok, prompts, max_new_tokens=24, batch_size=4, progress=False)
    expected = [_one_by_one(model, tok, p, 24) for p in prompts]
    assert [g.text for g in run.outputs] == expected
    assert all(g.new_tokens == 24 and g.finish == "length" for g in run.outputs)
    assert run.new_tokens == 24 * len(prompts) and run.tokens_per_second > 0


def test_ignores_sampling_defaults_of_the_checkpoint(tiny, prompts):
    model, tok = tiny
    model.generation_config.do_sample = True
    model.generation_config.temperature = 5.0
    model.generation_config.repetition_penalty = 3.0
    try:
        a = generate(model, tok, prompts[:2], max_new_tokens=12, batch_size=2, progress=False)
        b = generate(model, tok, prompts[:2], max_new_tokens=12, batch_size=2, progress=False)
    finally:
        model.generation_config.do_sample = False
        model.generation_config.temperature = 1.0
        model.generation_config.repetition_penalty = 1.0
    assert [g.text for g in a.outputs] == [g.text for g in b.outputs]
    assert [g.text for g in a.outputs] == [_one_by_one(model, tok, p, 12) for p in prompts[:2]]


def test_stop_sequence_cuts_the_output(tiny, prompts):
    model, tok = tiny
    full = generate(model, tok, prompts[:3], max_new_tokens=30, batch_size=3, progress=False).outputs
    # a stop string taken from the middle of the first output
    text = full[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop and text.find(stop) > 0
    cut_run = generate(model, tok, prompts[:3], max_new_tokens=30, batch_size=3, stop=[stop], progress=False)
    first = cut_run.outputs[0]
    assert first.text == text[: text.find(stop)] and first.finish == "stop"
    assert first.new_tokens < 30
    for g, ref in zip(cut_run.outputs[1:], full[1:]):  # other rows: unchanged unless they hit it too
        assert ref.text.startswith(g.text) and (g.finish == "stop" or g.text == ref.text)


def test_cut_rules():
    assert cut("abc Question: more", ["Question:"], False) == ("abc ", "stop")
    text = "Sure:\n```python\ndef f():\n    return 1\n```\nThis works because"
    assert cut(text, [], True) == (text[: text.index("```\nThis") + 3], "code_block")
    assert cut("```python\ndef f(", [], True) == ("```python\ndef f(", None)
    assert cut("no rule", ["zzz"], True) == ("no rule", None)


def test_long_prompts_are_left_truncated_to_fit(tiny):
    model, tok = tiny
    long_prompt = "word " * 400  # the tiny model has 256 positions
    run = generate(model, tok, [long_prompt], max_new_tokens=8, batch_size=1, progress=False)
    assert run.outputs[0].truncated_prompt and run.outputs[0].prompt_tokens == 256 - 8
