"""Batched greedy generation for evaluation: left padding, KV cache, stop sequences.

Prompts are sorted by length and run in batches, left-padded so every row's last prompt
token sits in the same column and the KV cache can be shared across the batch; the test
suite checks that this gives exactly the tokens of one unpadded ``generate`` per prompt.

Decoding is plain greedy: the model's own ``generation_config`` is not used, because
instruct checkpoints ship sampling defaults (Qwen2.5: temperature 0.7, top-p 0.8,
repetition penalty 1.05) that would silently change the protocol. Only its end-of-sequence
ids are kept.

Stopping: end-of-sequence, any stop string (the text is cut *before* it, as
lm-evaluation-harness's ``until``), optionally the end of the first complete fenced code
block (chat models explain their code after it, which costs CPU time and is never scored),
and ``max_new_tokens``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from pipeline.core.adapter import input_device
from pipeline.core.data import batches
from pipeline.core.errors import PipelineError
from pipeline.compute.parallel import SINGLE, Shard

FENCE = "```"


@dataclass
class Generation:
    """One prompt's output."""

    text: str  # decoded new text, cut at the stop rule that ended it
    new_tokens: int  # tokens generated for this row, up to and including its stopping token
    finish: str  # "eos" | "stop" | "code_block" | "length"
    prompt_tokens: int
    truncated_prompt: bool  # True if the prompt was cut from the left to fit the context


@dataclass
class GenerationRun:
    outputs: list[Generation]
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(g.new_tokens for g in self.outputs)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def eos_ids(model, tokenizer) -> list[int]:
    """End-of-sequence ids from the model's generation config and the tokenizer."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise PipelineError("the tokenizer and model define no end-of-sequence token",
                            "use a model directory whose tokenizer sets eos_token")
    return ids


def greedy_config(model, tokenizer, max_new_tokens: int):
    """A fresh greedy GenerationConfig (no sampling, no repetition penalty)."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                            eos_token_id=eos_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id,
                            repetition_penalty=1.0, temperature=None, top_p=None, top_k=None)


def cut(text: str, stop: Sequence[str], code_block: bool) -> tuple[str, str | None]:
    """The text up to the earliest stop rule, and which rule ("stop"/"code_block") or None."""
    best, rule = len(text), None
    for s in stop:
        i = text.find(s)
        if 0 <= i < best:
            best, rule = i, "stop"
    if code_block:
        first = text.find(FENCE)
        if first >= 0:
            second = text.find(FENCE, first + len(FENCE))
            if second >= 0 and second + len(FENCE) < best:
                best, rule = second + len(FENCE), "code_block"
    return text[:best], rule


class _TextStop:
    """Stopping criterion: a row is done once its decoded new text meets a stop rule."""

    def __init__(self, tokenizer, prompt_width: int, stop: Sequence[str], code_block: bool) -> None:
        self.tokenizer, self.width, self.stop, self.code_block = tokenizer, prompt_width, list(stop), code_block

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            text = self.tokenizer.decode(input_ids[row, self.width:], skip_special_tokens=True)
            done[row] = cut(text, self.stop, self.code_block)[1] is not None
        return done


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def prompt_budget(model, max_new_tokens: int, max_prompt_tokens: int | None) -> int | None:
    """How many prompt tokens fit: the explicit bound, else the context minus the answer."""
    if max_prompt_tokens:
        return max_prompt_tokens
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx is None:
        return None
    if ctx <= max_new_tokens:
        raise PipelineError(f"max_new_tokens {max_new_tokens} does not fit the model's context of {ctx} tokens",
                            "lower the benchmark's max_new_tokens in the evaluation params")
    return ctx - max_new_tokens


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    stop: Sequence[str] = (),
    stop_after_code_block: bool = False,
    max_prompt_tokens: int | None = None,
    progress: bool = True,
    desc: str = "generate",
    shard: Shard = SINGLE,
) -> GenerationRun | None:
    """Greedy completions of ``prompts`` (already rendered), in the input order.

    Under several processes each generates its share of the batches (the same batches one
    process forms) and the main process gets every output (the others get None)."""
    from tqdm.auto import tqdm
    from transformers import StoppingCriteriaList

    if batch_size < 1 or max_new_tokens < 1:
        raise PipelineError("batch_size and max_new_tokens must be at least 1",
                            "fix the evaluation block in params.yaml")
    budget = prompt_budget(model, max_new_tokens, max_prompt_tokens)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    truncated = [budget is not None and len(e) > budget for e in encoded]
    encoded = [e[-budget:] if t else e for e, t in zip(encoded, truncated)]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # longest first: OOM shows early
    config = greedy_config(model, tokenizer, max_new_tokens)
    eos = set(config.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.eos_token_id[0]
    pieces: list[tuple[int, list[tuple[int, Generation]]]] = []
    device = input_device(model)
    start = time.monotonic()
    mine = shard.mine(batches(len(order), batch_size))
    bar = tqdm(total=sum(sl.stop - sl.start for _, sl in mine), desc=desc, unit="prompt", disable=not progress)
    produced = 0
    for b, sl in mine:
        idx = order[sl]
        done: list[tuple[int, Generation]] = []
        ids, mask = _left_pad([encoded[i] for i in idx], pad)
        width = ids.shape[1]
        criteria = StoppingCriteriaList()
        if stop or stop_after_code_block:
            criteria.append(_TextStop(tokenizer, width, stop, stop_after_code_block))
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=config, stopping_criteria=criteria)
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            finish, n = "length", len(new)
            for j, tok in enumerate(new):
                if tok in eos:
                    finish, n = "eos", j + 1
                    break
            text = tokenizer.decode(new[:n], skip_special_tokens=True)
            text, rule = cut(text, stop, stop_after_code_block)
            if rule is not None:
                finish = rule
                # Rows that met a stop rule are padded afterwards; count only real tokens.
                n = _tokens_until_rule(tokenizer, new[:n], stop, stop_after_code_block)
            done.append((i, Generation(text, n, finish, len(encoded[i]), truncated[i])))
            produced += n
        pieces.append((b, done))
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{produced / max(time.monotonic() - start, 1e-9):.1f}")
    bar.close()
    merged = shard.gather(pieces)
    if merged is None:
        return None
    results = dict(pair for done in merged for pair in done)
    return GenerationRun([results[i] for i in range(len(prompts))], time.monotonic() - start)


def _tokens_until_rule(tokenizer, tokens: list[int], stop: Sequence[str], code_block: bool) -> int:
    """The shortest prefix of ``tokens`` that meets a stop rule (rules stay met once met)."""
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if cut(tokenizer.decode(tokens[:mid], skip_special_tokens=True), stop, code_block)[1] is None:
            lo = mid + 1
        else:
            hi = mid
    return lo
