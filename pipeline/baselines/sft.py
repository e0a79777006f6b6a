"""SFT: LoRA fine-tuning of the target on the transfer split, cross-entropy on answer tokens.

The reviewer's question every transfer method must answer: does it beat plain fine-tuning
on the same data?
"""

from __future__ import annotations

import torch

from pipeline.core import lora
from pipeline.core.adapter import ModelAdapter
from pipeline.baselines.context import Context, Result, trim
from pipeline.baselines.losses import supervised_ce
from pipeline.core.data import EncodedSplit
from pipeline.core.errors import PipelineError
from pipeline.baselines.training import TrainSettings, plan, positions, train

KEYS = {"train"}


def prepare(ctx: Context) -> TrainSettings:
    unknown = set(ctx.block) - KEYS
    if unknown:
        raise PipelineError(f"unknown keys {sorted(unknown)} in baselines.sft", f"use {sorted(KEYS)}")
    ctx.require_models()
    ctx.require_splits("transfer")
    return ctx.train_settings()


def ce_loss_fn(peft_model, data: EncodedSplit):
    """Batch of example indices -> mean CE on their supervised positions."""
    adapter = ModelAdapter(peft_model.get_base_model())

    def loss_fn(rows: torch.Tensor):
        ids, mask, sup = trim(data, rows)
        return supervised_ce(adapter.supervised_logits(ids, mask, sup), ids, sup), {}

    return loss_fn


def finetune(ctx: Context, model, data: EncodedSplit, settings: TrainSettings, desc: str):
    """LoRA CE training of ``model`` (already wrapped by PEFT); returns the merged model and log."""
    steps = plan(len(data.ids), settings, ctx.seed)
    model.train()
    with ctx.cost.phase("train"):
        log = train(list(model.parameters()), steps, ce_loss_fn(model, data), settings, desc, shard=ctx.shard,
                    units=positions(data), on_step=ctx.log_step)
    return lora.merge(model), log


def run(ctx: Context, settings: TrainSettings) -> Result:
    tok = ctx.tokenizer()
    data = ctx.encode(tok, "transfer")
    with ctx.cost.phase("load"):
        model = lora.attach(ctx.load_target(), ctx.common.lora)
    merged, log = finetune(ctx, model, data, settings, f"sft {ctx.task} s{ctx.seed}")
    return Result(merged, tok, {"train": log, "n_examples": len(data.ids), "n_positions": data.n_supervised})
