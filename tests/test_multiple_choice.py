"""MMLU scoring: the max-log-likelihood letter wins; fast and general paths agree."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import mmlu_record, tiny_model_dir
from torch import nn

from pipeline.evaluation.benchmarks import Settings, evaluate, mmlu_choices
from pipeline.core.data import render_prompt
from pipeline.core.loading import load_model, load_tokenizer
from pipeline.evaluation.multiple_choice import choice_logprobs, continuation_ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return load_model(str(d), "float32"), load_tokenizer(str(d))


class OracleLM(nn.Module):
    """Next-token logits chosen by the test: for each known context, a fixed preference."""

    def __init__(self, vocab: int, preferences: dict[tuple[int, ...], dict[int, float]]) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.vocab, self.preferences = vocab, preferences

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep=0, use_cache=False):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            context = tuple(t for t, m in zip(ids, mask) if m)
            logits = torch.zeros(self.vocab)
            for token, value in self.preferences[context].items():
                logits[token] = value
            rows.append(logits)
        out = torch.stack(rows).unsqueeze(1)
        return type("Out", (), {"logits": out})()


def test_mmlu_picks_the_highest_loglik_letter(tiny):
    _, tok = tiny
    golds = ["A", "C", "D", "B", "C"]
    records = [mmlu_record(i, "physics" if i < 3 else "law", g) for i, g in enumerate(golds)]
    # The model prefers: the gold letter for questions 0-3; for question 4 "A" over the gold "C".
    favourite = ["A", "C", "D", "B", "A"]
    letter_ids = {c.strip(): continuation_ids(tok, "x\n", c)[0] for c in mmlu_choices("")}
    prefs = {}
    for r, fav in zip(records, favourite):
        ctx = tuple(tok(render_prompt(tok, r["messages"][:-1]), add_special_tokens=False)["input_ids"])
        # Give every letter some mass so the argmax, not "the only non-zero", decides.
        prefs[ctx] = {letter_ids[L]: 1.0 for L in "ABCD"} | {letter_ids[fav]: 4.0}
    oracle = OracleLM(len(tok), prefs)
    result = evaluate("mmlu", oracle, tok, records, Settings(batch_size=2), progress=False)
    assert [s["extracted"] for s in result.samples] == favourite
    assert result.metrics["acc"] == 80.0 and result.metrics["n"] == 5 and result.metrics["acc_correct"] == 4
    assert result.details["subjects"]["physics"]["acc"] == 100.0
    assert result.details["subjects"]["law"]["acc"] == 50.0 and result.details["subjects"]["law"]["n"] == 2
    assert result.metrics["acc_ci95_low"] < 80.0 < result.metrics["acc_ci95_high"]


def test_letters_follow_the_text_before_them():
    assert mmlu_choices("") == ["A", "B", "C", "D"]  # right after the template's "assistant\n"
    assert mmlu_choices("The answer is:") == [" A", " B", " C", " D"]
    assert mmlu_choices("The answer is: ") == ["A", "B", "C", "D"]


def test_fast_path_equals_per_choice_path_and_batching_is_neutral(tiny):
    model, tok = tiny
    records = [mmlu_record(i, "physics", "A") for i in range(3)]
    contexts = [render_prompt(tok, r["messages"][:-1]) for r in records]
    contexts[1] += "x" * 7  # different lengths -> padding inside a batch
    fast = choice_logprobs(model, tok, contexts, mmlu_choices(""), batch_size=3, progress=False)
    slow = choice_logprobs(model, tok, contexts, mmlu_choices(""), batch_size=3, progress=False,
                           force_per_choice=True)
    single = torch.cat([choice_logprobs(model, tok, [c], mmlu_choices(""), batch_size=1, progress=False)
                        for c in contexts])
    assert torch.allclose(fast, slow, atol=1e-4)
    assert torch.allclose(fast, single, atol=1e-4)
    # and the scores are log-probabilities of real next tokens
    assert (fast < 0).all()


def test_multi_token_continuations_are_summed(tiny):
    model, tok = tiny
    ctx = render_prompt(tok, [{"role": "user", "content": "Pick one."}]) + "The answer is:"
    choices = mmlu_choices("The answer is:")
    assert any(len(continuation_ids(tok, ctx, c)) > 1 for c in choices)  # the general path is exercised
    scores = choice_logprobs(model, tok, [ctx], choices, progress=False)
    ids = tok(ctx, add_special_tokens=False)["input_ids"]
    cont = continuation_ids(tok, ctx, choices[0])
    with torch.inference_mode():
        logits = model(torch.tensor([ids + cont])).logits.float()
    logp = torch.log_softmax(logits, -1)[0]
    expected = sum(logp[len(ids) - 1 + j, t] for j, t in enumerate(cont))
    assert torch.isclose(scores[0, 0], expected, atol=1e-4)
