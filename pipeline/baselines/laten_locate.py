"""LaTen, step 1-2: locate layers and neurons with a static logit-lens attribution.

For the answer's last content token w and the position t that predicts it, with the
logit-lens readout p(. | h) = softmax(W_U n(h)) (the model's own final norm and LM head):

- sub-layer importance:  Imp = log p(w | r + o) - log p(w | r), r the residual stream entering
  the sub-layer (attention or feed-forward) and o its output;
- unit importance: the same with o replaced by one unit's contribution. A feed-forward unit i
  contributes m_i * W_down[:, i] (m = the down projection's input), an attention unit j (one
  coordinate of the o projection's input a) contributes a_j * W_o[:, j].

Feed-forward units index up_proj rows and down_proj columns; attention units index o_proj
columns. v_proj rows are scored by summing the attention units that read them (with grouped
query attention several query heads share one value head; without it this is the o ranking).
Everything is averaged over the extract examples: one static attribution, computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.core.adapter import ModelAdapter
from pipeline.baselines.context import trim
from pipeline.compute.parallel import SINGLE, Shard
from pipeline.core.data import EncodedSplit

UNIT_CHUNK = 256  # units scored per logit-lens matmul: bounds the (chunk, V) logits in memory


def answer_positions(tokenizer, data: EncodedSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, the position t predicting the answer's last content token w, and w.

    Content = not a special token and containing a letter or digit, so trailing punctuation,
    whitespace and the end-of-turn marker are skipped; falls back to the last answer token.
    """
    special = set(tokenizer.all_special_ids)
    positions, tokens = [], []
    for ids, sup in zip(data.input_ids, data.supervised):
        cand = torch.nonzero(sup).flatten().tolist()
        chosen = cand[-1]
        for t in reversed(cand):
            w = int(ids[t + 1])
            if w not in special and any(ch.isalnum() for ch in tokenizer.decode([w])):
                chosen = t
                break
        positions.append(chosen)
        tokens.append(int(ids[chosen + 1]))
    return torch.tensor(positions), torch.tensor(tokens)


@dataclass
class Capture:
    """Per block, the states at the attribution positions, each (N, dim)."""

    block_in: list[torch.Tensor]
    attn_out: list[torch.Tensor]
    mlp_out: list[torch.Tensor]
    o_in: list[torch.Tensor]  # input of o_proj: the attention units
    down_in: list[torch.Tensor]  # input of down_proj: the feed-forward units


@torch.no_grad()
def capture(model: nn.Module, data: EncodedSplit, positions: torch.Tensor, batch_size: int = 8) -> Capture:
    adapter = ModelAdapter(model)
    n = adapter.n_layers
    home = adapter.lm_head.device  # where the logit lens reads them (a spread model's blocks sit elsewhere)
    store: dict[str, list[list[torch.Tensor]]] = {f: [[] for _ in range(n)] for f in Capture.__dataclass_fields__}
    current: dict[str, torch.Tensor] = {}

    def keep(field: str, k: int, pre: bool):
        def hook(_module, args, *rest):
            if pre:
                x = args[0] if args else rest[0]["hidden_states"]
            else:
                x = rest[-1]
                x = x[0] if isinstance(x, tuple) else x
            at = x[torch.arange(x.shape[0], device=x.device), current["t"].to(x.device)]
            store[field][k - 1].append(at.float().to(home))

        return hook

    handles = []
    for k in range(1, n + 1):
        handles += [
            adapter.block(k).register_forward_pre_hook(keep("block_in", k, True), with_kwargs=True),
            adapter.attention(k).register_forward_hook(keep("attn_out", k, False)),
            adapter.feed_forward(k).register_forward_hook(keep("mlp_out", k, False)),
            adapter.linear(k, "o").register_forward_pre_hook(keep("o_in", k, True), with_kwargs=True),
            adapter.linear(k, "down").register_forward_pre_hook(keep("down_in", k, True), with_kwargs=True),
        ]
    try:
        for start in range(0, len(data.input_ids), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(data.input_ids)))
            ids, mask, _ = trim(data, rows)
            current["t"] = positions[rows]
            adapter.backbone(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return Capture(**{f: [torch.cat(x) for x in v] for f, v in store.items()})


def log_prob(adapter: ModelAdapter, hidden: torch.Tensor, w: torch.Tensor,
             vocab: torch.Tensor | None = None) -> torch.Tensor:
    """log p(w | h) under the logit lens; hidden (..., D), w broadcastable to hidden[..., 0].

    With ``vocab`` (ids, w among them) the softmax runs over those rows of the LM head only.
    """
    normed = adapter.final_norm(hidden.to(adapter.lm_head.dtype))
    if vocab is None:
        logits = (normed @ adapter.lm_head.T).float()
        target = logits.gather(-1, w.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    else:
        logits = (normed @ adapter.lm_head[vocab].T).float()
        target = (normed @ adapter.lm_head[w]).float()
    return target - logits.logsumexp(-1)


def readout_vocab(adapter: ModelAdapter, residual: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor | None:
    """The ``size`` tokens most likely under the logit lens of ``residual``, plus w (None: all).

    Scoring a unit needs a full-vocabulary softmax per unit (units x V x D flops, hours on a
    CPU for a 1.5B source); restricting the partition function to the readout's top tokens
    is the approximation that makes it minutes. size 0 (or >= V) keeps it exact.
    """
    if not size or size >= adapter.vocab_size:
        return None
    with torch.no_grad():
        top = (adapter.final_norm(residual.to(adapter.lm_head.dtype)) @ adapter.lm_head.T).topk(size).indices
    return torch.unique(torch.cat([top, w.view(1)]))


@torch.no_grad()
def unit_importance(adapter: ModelAdapter, residual: torch.Tensor, coeff: torch.Tensor, columns: torch.Tensor,
                    w: torch.Tensor, vocab_size: int = 0) -> torch.Tensor:
    """Mean over examples of log p(w | r + c_i * col_i) - log p(w | r), for every unit i.

    residual (N, D); coeff (N, U) the units' activations; columns (D, U) the write vectors;
    vocab_size: see :func:`readout_vocab`. Computed where the model is; returned on the CPU.
    """
    return (unit_importance_sum(adapter, residual, coeff, columns, w, vocab_size) / len(residual)).float()


@torch.no_grad()
def unit_importance_sum(adapter: ModelAdapter, residual: torch.Tensor, coeff: torch.Tensor, columns: torch.Tensor,
                        w: torch.Tensor, vocab_size: int = 0) -> torch.Tensor:
    """:func:`unit_importance` summed over the examples instead of averaged: (U,) float64 on the CPU."""
    total = torch.zeros(coeff.shape[1], dtype=torch.float64, device=residual.device)
    cols = columns.float().T.to(residual.device)  # (U, D)
    for r, c, wi in zip(residual, coeff, w):
        vocab = readout_vocab(adapter, r, wi, vocab_size)
        base = log_prob(adapter, r, wi, vocab)
        for s in range(0, cols.shape[0], UNIT_CHUNK):
            states = r + c[s:s + UNIT_CHUNK, None] * cols[s:s + UNIT_CHUNK]
            total[s:s + UNIT_CHUNK] += (log_prob(adapter, states, wi, vocab) - base).double()
    return total.cpu()


@dataclass
class Attribution:
    attn_layer: list[float]  # per block
    ffn_layer: list[float]
    attn_kept: list[int]  # kept blocks (1-based, in order) for v/o
    ffn_kept: list[int]  # kept blocks for up/down
    ffn_units: dict[int, torch.Tensor]  # kept block -> (f,) importance of up rows / down columns
    o_units: dict[int, torch.Tensor]  # kept block -> (H * hd,) importance of o columns
    v_units: dict[int, torch.Tensor]  # kept block -> (KV * hd,) importance of v rows


def value_rows(adapter: ModelAdapter, o_scores: torch.Tensor) -> torch.Tensor:
    """Sum attention-unit scores onto the v_proj rows they read (grouped query attention)."""
    cfg = adapter.config
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = o_scores.shape[0] // heads
    j = torch.arange(o_scores.shape[0])
    row = (j // head_dim) // (heads // kv) * head_dim + j % head_dim
    return torch.zeros(kv * head_dim, dtype=o_scores.dtype).index_add(0, row, o_scores)


def keep_layers(scores: list[float], n_keep: int) -> list[int]:
    """The ``n_keep`` most important blocks (1-based), in their original order."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n_keep]
    return [i + 1 for i in sorted(ranked)]


def ranked(scores: torch.Tensor) -> torch.Tensor:
    """Unit indices, most important first (stable on ties)."""
    return torch.sort(scores, descending=True, stable=True).indices


def rows(data: EncodedSplit, index: list[int]) -> EncodedSplit:
    """The examples ``index`` of a split."""
    pick = torch.tensor(index, dtype=torch.long)
    return EncodedSplit([data.ids[i] for i in index], data.input_ids[pick], data.attention_mask[pick],
                        data.supervised[pick])


@torch.no_grad()
def attribute(model: nn.Module, data: EncodedSplit, tokenizer, n_keep: int, vocab_size: int = 0,
              shard: Shard = SINGLE) -> Attribution:
    """Layer importances for every block; keep ``n_keep`` blocks per sub-layer kind, in order;
    unit importances for the kept blocks only (the expensive part: one logit lens per unit).

    Data parallel (``shard``): each process scores every world-th example; the per-example
    sums are added over the processes (float64) before the means, so every process keeps the
    same blocks and ranks the same units.
    """
    adapter = ModelAdapter(model)
    n = len(data.input_ids)
    mine = [i for i, _ in shard.mine(range(n))]
    positions, w = answer_positions(tokenizer, data)
    w = w[mine].to(adapter.lm_head.device)
    cap = capture(model, rows(data, mine), positions[mine].to(data.input_ids.device)) if mine else None
    layer = torch.zeros(2, adapter.n_layers, dtype=torch.float64)  # attention, feed-forward sums
    for k in range(adapter.n_layers if cap else 0):
        r_attn = cap.block_in[k]
        r_ffn = r_attn + cap.attn_out[k]
        layer[0, k] = float((log_prob(adapter, r_ffn, w) - log_prob(adapter, r_attn, w)).double().sum())
        layer[1, k] = float((log_prob(adapter, r_ffn + cap.mlp_out[k], w) - log_prob(adapter, r_ffn, w)).double().sum())
    shard.all_sum([layer])
    attn_layer, ffn_layer = (layer / n).tolist()
    attn_kept, ffn_kept = keep_layers(attn_layer, n_keep), keep_layers(ffn_layer, n_keep)

    def units(k: int, role: str) -> torch.Tensor:
        """Summed importance of the units written by ``role`` (down or o) of block k."""
        weight = adapter.linear(k, role).weight
        if cap is None:
            return torch.zeros(weight.shape[1], dtype=torch.float64)
        residual = cap.block_in[k - 1] + (cap.attn_out[k - 1] if role == "down" else 0)
        coeff = cap.down_in[k - 1] if role == "down" else cap.o_in[k - 1]
        return unit_importance_sum(adapter, residual, coeff, weight, w, vocab_size)

    sums = {("down", k): units(k, "down") for k in ffn_kept} | {("o", k): units(k, "o") for k in attn_kept}
    shard.all_sum(list(sums.values()))
    ffn_units = {k: (sums[("down", k)] / n).float() for k in ffn_kept}
    o_units = {k: (sums[("o", k)] / n).float() for k in attn_kept}
    v_units = {k: value_rows(adapter, o_units[k]) for k in attn_kept}
    return Attribution(attn_layer, ffn_layer, attn_kept, ffn_kept, ffn_units, o_units, v_units)
