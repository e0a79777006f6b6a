"""Hidden-state distillation (DistillKit / TinyBERT style) plus output KL, LoRA on the target.

Target block k is paired with source layer base(k) (the same floor depth map SemAlign's
``floor`` pairing uses); a learned linear projection D_t -> D_s per pair maps the target's
residual stream into the source's space, where a cosine or MSE loss compares it with the
cached source state. The projections only serve training and are discarded at save, so the
comparison with SemAlign isolates what the vocabulary-basis alignment adds over a learned map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.core import lora
from pipeline.core.adapter import ModelAdapter
from pipeline.baselines import cached_source
from pipeline.baselines.context import Context, Result, depth, trim
from pipeline.baselines.kd import KDSettings, kd_loss, load_transfer, position_rows
from pipeline.baselines.losses import HIDDEN_LOSSES, hidden_loss
from pipeline.core.errors import PipelineError
from pipeline.method.pairing import base_map
from pipeline.baselines.training import plan, positions, train


@dataclass(frozen=True)
class HiddenKDSettings:
    kd: KDSettings
    loss: str = "cosine"
    hidden_weight: float = 1.0
    kl_weight: float = 1.0
    layers: tuple[int, ...] = ()  # target blocks to distil; empty: all

    EXTRA = ("loss", "hidden_weight", "kl_weight", "layers")


def prepare(ctx: Context) -> HiddenKDSettings:
    kd = KDSettings.from_context(ctx, extra=HiddenKDSettings.EXTRA)
    b = ctx.block
    s = HiddenKDSettings(kd=kd, loss=str(b.get("loss", "cosine")), hidden_weight=float(b.get("hidden_weight", 1.0)),
                         kl_weight=float(b.get("kl_weight", 1.0)), layers=tuple(int(k) for k in b.get("layers") or ()))
    if s.loss not in HIDDEN_LOSSES:
        raise PipelineError(f"unknown baselines.hidden_kd.loss {s.loss!r}", f"use one of {HIDDEN_LOSSES}")
    ctx.require_models(source=True)  # only the source's config.json: its depth fixes the pairing
    ctx.require_splits("transfer")
    cached_source.open_split(ctx.paths.cache / "transfer", layers=tuple(sorted(set(layer_pairs(ctx, s).values()))))
    return s


def layer_pairs(ctx: Context, s: HiddenKDSettings) -> dict[int, int]:
    """Target block -> source layer (1-based), floor map, restricted to ``s.layers``."""
    n_t = depth(ctx.paths.target)
    pairs = dict(enumerate(base_map(depth(ctx.paths.source), n_t), start=1))
    chosen = s.layers or tuple(pairs)
    bad = [k for k in chosen if k not in pairs]
    if bad:
        raise PipelineError(f"baselines.hidden_kd.layers names blocks {bad} outside the target (1..{n_t})",
                            "list target blocks, numbered from 1, or leave it empty for all")
    return {k: pairs[k] for k in chosen}


def projections(pairs: dict[int, int], d_target: int, d_source: int) -> nn.ModuleDict:
    """One bias-free linear map D_t -> D_s per paired target block."""
    return nn.ModuleDict({str(k): nn.Linear(d_target, d_source, bias=False) for k in pairs})


class BlockOutputs:
    """Forward hooks that keep the residual stream after chosen target blocks."""

    def __init__(self, adapter: ModelAdapter, blocks) -> None:
        self.states: dict[int, torch.Tensor] = {}
        self.handles = [adapter.block(k).register_forward_hook(self._keep(k)) for k in blocks]

    def _keep(self, k: int):
        def hook(_module, _args, output):
            self.states[k] = output[0] if isinstance(output, tuple) else output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def run(ctx: Context, s: HiddenKDSettings) -> Result:
    tok = ctx.tokenizer()
    pairs = layer_pairs(ctx, s)
    data, cached = load_transfer(ctx, tok, layers=tuple(sorted(set(pairs.values()))))
    topk_ids, topk_logits = (t.to(ctx.device) for t in cached.topk())
    source_states = {l: cached.hidden(l).to(ctx.device) for l in sorted(set(pairs.values()))}  # in their stored dtype
    d_source = next(iter(source_states.values())).shape[1]
    with ctx.cost.phase("load"):
        model = lora.attach(ctx.load_target(), ctx.common.lora)
    adapter = ModelAdapter(model.get_base_model())
    # Trained from scratch: in the training precision, fed the states cast to it.
    proj_dtype = ctx.train_dtype
    proj = projections(pairs, adapter.width, d_source).to(adapter.lm_head.device, proj_dtype)
    outputs = BlockOutputs(adapter, pairs)

    def loss_fn(rows: torch.Tensor):
        ids, mask, sup = trim(data, rows)
        pos = position_rows(data, rows)
        logits = adapter.supervised_logits(ids, mask, sup)
        kl, parts = kd_loss(logits, ids, sup, topk_ids[pos], topk_logits[pos], s.kd)
        hid = torch.stack([hidden_loss(proj[str(k)](outputs.states[k][sup].to(proj_dtype)), source_states[l][pos],
                                       s.loss)
                           for k, l in pairs.items()]).mean()
        parts["hidden"] = hid
        return s.hidden_weight * hid + s.kl_weight * kl, parts

    model.train()
    with ctx.cost.phase("train"):
        log = train(list(model.parameters()) + list(proj.parameters()), plan(len(data.ids), s.kd.train, ctx.seed),
                    loss_fn, s.kd.train, f"hidden_kd {ctx.task} s{ctx.seed}", shard=ctx.shard,
                    units=positions(data), on_step=ctx.log_step)
    outputs.remove()
    shapes = {k: list(proj[str(k)].weight.shape) for k in pairs}  # logged; the projections are dropped here
    return Result(lora.merge(model), tok, {"train": log, "pairs": pairs, "projection_shapes": shapes,
                                           "n_examples": len(data.ids), "n_positions": data.n_supervised})
