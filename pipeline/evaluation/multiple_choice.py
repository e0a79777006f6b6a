"""Multiple-choice scoring by log-likelihood of each answer continuation (MMLU).

The score of choice ``c`` after context ``x`` is ``log p(tokens(c) | x)``, summed over the
continuation's tokens, and the prediction is the argmax (lm-evaluation-harness's ``acc``;
Open-Instruct takes the same argmax over the single letter tokens).

Tokenisation: the continuation's tokens are those that ``tokenize(x + c)`` adds after
``tokenize(x)``, so they are exactly what the model would have produced after ``x`` (this
is where " A" and "A" differ: which one is natural depends on what ``x`` ends with; see
:func:`pipeline.evaluation.benchmarks.mmlu_choices`). If the context's tokens are not a prefix of the
joint tokenisation (a merge across the boundary), ``c`` is tokenised on its own.

When every continuation is a single token (the usual case for letters), one forward pass
per question suffices: only the last position's logits are computed. Otherwise each
(context, continuation) pair gets its own pass.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pipeline.core.adapter import input_device
from pipeline.core.data import batches
from pipeline.compute.parallel import SINGLE, Shard


def continuation_ids(tokenizer, context: str, continuation: str) -> list[int]:
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if len(full) > len(ctx) and full[: len(ctx)] == ctx:
        return full[len(ctx):]
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # Padding must not shift the real tokens' positions (generate() does the same).
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _last_token_logprobs(model, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B, V) next-token log-probabilities after each row (left-padded, one forward)."""
    ids, mask = _pad(rows, pad_id, left=True)
    device = input_device(model)
    kwargs = dict(input_ids=ids.to(device), attention_mask=mask.to(device),
                  position_ids=_positions(mask).to(device), use_cache=False)
    try:
        # Only the last position's logits: the LM head is a large share of a forward pass.
        out = model(**kwargs, logits_to_keep=1)
    except TypeError:  # a model class without logits_to_keep
        out = model(**kwargs)
    return torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()


def _sequence_logprobs(model, contexts: list[list[int]], conts: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B,) summed log-probabilities of each continuation after its context (right-padded)."""
    rows = [c + k for c, k in zip(contexts, conts)]
    ids, mask = _pad(rows, pad_id, left=False)
    device = input_device(model)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    logp = torch.log_softmax(out.logits.float(), dim=-1).cpu()
    scores = torch.zeros(len(rows))
    for i, (c, k) in enumerate(zip(contexts, conts)):
        # Token t is predicted at position t - 1.
        pos = torch.arange(len(c) - 1, len(c) + len(k) - 1)
        scores[i] = logp[i, pos, torch.tensor(k)].sum()
    return scores


def choice_logprobs(
    model,
    tokenizer,
    contexts: Sequence[str],
    choices: Sequence[str],
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "score choices",
    force_per_choice: bool = False,
    shard: Shard = SINGLE,
) -> torch.Tensor | None:
    """(N, C) log-likelihood of each choice after each context.

    Under several processes each scores its share of the batches (the same batches one
    process forms) and the main process gets the whole table (the others get None)."""
    from tqdm.auto import tqdm

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ctx_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts]
    cont_ids = [[continuation_ids(tokenizer, c, k) for k in choices] for c in contexts]
    single = [i for i in range(len(contexts))
              if not force_per_choice and all(len(k) == 1 for k in cont_ids[i])]
    single.sort(key=lambda i: -len(ctx_ids[i]))  # similar lengths share a batch: less padding
    chosen = set(single)
    multi = [i for i in range(len(contexts)) if i not in chosen]
    pairs = [(i, j) for i in multi for j in range(len(choices))]
    per_question = max(1, batch_size // len(choices)) * len(choices)
    # One list of batches, single-token questions first: each process takes its share of it.
    work = [("single", single[sl]) for sl in batches(len(single), batch_size)]
    work += [("pairs", pairs[sl]) for sl in batches(len(pairs), per_question)]
    pieces = []
    bar = tqdm(total=len(contexts), desc=desc, unit="question", disable=not progress)
    with torch.inference_mode():
        for b, (kind, chunk) in shard.mine(work):
            if kind == "single":
                logp = _last_token_logprobs(model, [ctx_ids[i] for i in chunk], pad)
                found = [((i, j), logp[row, k[0]]) for row, i in enumerate(chunk)
                         for j, k in enumerate(cont_ids[i])]
                bar.update(len(chunk))
            else:
                s = _sequence_logprobs(model, [ctx_ids[i] for i, _ in chunk], [cont_ids[i][j] for i, j in chunk], pad)
                found = list(zip(chunk, s))
                bar.update(len({i for i, _ in chunk}))
            pieces.append((b, found))
    bar.close()
    merged = shard.gather(pieces)
    if merged is None:
        return None
    scores = torch.full((len(contexts), len(choices)), float("nan"))
    for found in merged:
        for (i, j), v in found:
            scores[i, j] = v
    return scores
