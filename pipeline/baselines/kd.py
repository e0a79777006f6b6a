"""KD: forward KL(p_source || p_target) at temperature T on answer tokens, LoRA on the target.

The GKD-with-lambda-0 configuration practitioners run through TRL, except that the source
side is the cached top-K output logits: the source model is never loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.core import lora
from pipeline.core.adapter import ModelAdapter
from pipeline.baselines import cached_source
from pipeline.baselines.context import Context, Result, trim
from pipeline.baselines.losses import supervised_ce, topk_forward_kl
from pipeline.core.data import EncodedSplit
from pipeline.core.errors import PipelineError
from pipeline.baselines.training import TrainSettings, plan, positions, train


@dataclass(frozen=True)
class KDSettings:
    train: TrainSettings
    temperature: float = 2.0
    ce_weight: float = 0.0  # loss = (1 - w) * T^2 KL + w * CE

    KEYS = ("train", "temperature", "ce_weight")

    @classmethod
    def from_context(cls, ctx: Context, extra: tuple[str, ...] = ()) -> "KDSettings":
        unknown = set(ctx.block) - set(cls.KEYS) - set(extra)
        if unknown:
            raise PipelineError(f"unknown keys {sorted(unknown)} in baselines.{ctx.method}",
                                f"use {sorted(set(cls.KEYS) | set(extra))}")
        s = cls(train=ctx.train_settings(), temperature=float(ctx.block.get("temperature", cls.temperature)),
                ce_weight=float(ctx.block.get("ce_weight", cls.ce_weight)))
        if s.temperature <= 0 or not 0 <= s.ce_weight <= 1:
            raise PipelineError(f"invalid baselines.{ctx.method}: temperature {s.temperature}, ce_weight {s.ce_weight}",
                                "use temperature > 0 and 0 <= ce_weight <= 1")
        return s


def position_rows(data: EncodedSplit, examples: torch.Tensor) -> torch.Tensor:
    """Rows of the (P, ...) cache that belong to ``examples``, in the order ``supervised[examples]`` has."""
    offsets = data.offsets()
    return torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in examples.tolist()])


def load_transfer(ctx: Context, tokenizer, layers: tuple[int, ...] = ()) -> tuple[EncodedSplit, cached_source.CachedSplit]:
    """The cached transfer split, checked against the target-side encoding of its records."""
    cached = cached_source.open_split(ctx.paths.cache / "transfer", layers=layers)
    encoded = ctx.encode(tokenizer, "transfer")
    cached_source.check_same_encoding(cached, encoded)
    return encoded, cached


def prepare(ctx: Context) -> KDSettings:
    settings = KDSettings.from_context(ctx)
    ctx.require_models()
    ctx.require_splits("transfer")
    cached_source.open_split(ctx.paths.cache / "transfer")  # fails early if the cache is missing
    return settings


def kd_loss(student_logits, ids, sup, topk_ids, topk_logits, s: KDSettings):
    kl = topk_forward_kl(student_logits, topk_ids, topk_logits, s.temperature)
    if s.ce_weight == 0:
        return kl, {"kl": kl}
    ce = supervised_ce(student_logits, ids, sup)
    return (1 - s.ce_weight) * kl + s.ce_weight * ce, {"kl": kl, "ce": ce}


def run(ctx: Context, settings: KDSettings) -> Result:
    tok = ctx.tokenizer()
    data, cached = load_transfer(ctx, tok)
    topk_ids, topk_logits = (t.to(ctx.device) for t in cached.topk())
    with ctx.cost.phase("load"):
        model = lora.attach(ctx.load_target(), ctx.common.lora)
    adapter = ModelAdapter(model.get_base_model())

    def loss_fn(rows: torch.Tensor):
        ids, mask, sup = trim(data, rows)
        pos = position_rows(data, rows)
        return kd_loss(adapter.supervised_logits(ids, mask, sup), ids, sup, topk_ids[pos], topk_logits[pos], settings)

    model.train()
    with ctx.cost.phase("train"):
        log = train(list(model.parameters()), plan(len(data.ids), settings.train, ctx.seed), loss_fn,
                    settings.train, f"kd {ctx.task} s{ctx.seed}", shard=ctx.shard,
                    units=positions(data), on_step=ctx.log_step)
    return Result(lora.merge(model), tok, {"train": log, "n_examples": len(data.ids),
                                           "n_positions": data.n_supervised, "top_k": int(topk_ids.shape[1])})
