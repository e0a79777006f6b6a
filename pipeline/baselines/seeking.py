"""SEEKING (Zhong et al., ICLR 2024): sensitivity-located source sub-matrices as a LoRA start.

1. Sensitivity of every source weight over the seed examples, S = sum_k |theta * dL_k/dtheta|
   (per-example loss, absolute value per example, as the paper's code does). The seeds are
   the first ``seed_examples`` of the transfer split: the paper draws its 32 seeds from the
   1,000-example training file, which is what the transfer split is here.
2. Layer score = sum of a block's sensitivities; keep the L_t best source blocks in order,
   the i-th kept one feeds target block i.
3. Per weight matrix, the contiguous target-shaped window of the source matrix with the
   largest summed sensitivity (2-D prefix sums, all windows at once). Shapes come from the
   two models, so different widths, head counts and head dimensions are all just
   "a (n_t, m_t) window inside an (n_s, m_s) matrix".
4. Rank-r SVD of the window: B = U_r S_r, A = V_r^T.
5. LoRA initialised to (B, A), base weight W_t - scale * B A: the model is unchanged at step
   0 and the source knowledge is the starting point of the LoRA update; then LoRA training
   on the transfer split and merge.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.core import lora
from pipeline.core.adapter import ModelAdapter
from pipeline.baselines.context import Context, Result, trim
from pipeline.baselines.losses import supervised_ce
from pipeline.baselines.sft import finetune
from pipeline.core.data import EncodedSplit
from pipeline.core.errors import PipelineError
from pipeline.baselines.training import TrainSettings
from pipeline.compute.parallel import SINGLE, Shard

KEYS = {"train", "seed_examples", "modules"}
SEED_SPLIT = "transfer"  # where the seed examples come from (pipeline.evaluation.budget caps by its size)

Key = tuple[int, str]  # (1-based block, module role)


@dataclass(frozen=True)
class SeekingSettings:
    train: TrainSettings
    seed_examples: int = 32
    rank: int = 16  # the SVD factors initialise the LoRA adapters: always baselines.lora.r
    modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")


def prepare(ctx: Context) -> SeekingSettings:
    if "rank" in ctx.block:  # a knob that had to equal another by hand
        raise PipelineError(f"params.yaml sets baselines.seeking.rank ({ctx.block['rank']!r}), which is gone: "
                            "SEEKING's SVD rank is the LoRA rank its factors initialise, baselines.lora.r",
                            f"delete baselines.seeking.rank; set baselines.lora.r (now {ctx.common.lora.r}) instead")
    unknown = set(ctx.block) - KEYS
    if unknown:
        raise PipelineError(f"unknown keys {sorted(unknown)} in baselines.seeking", f"use {sorted(KEYS)}")
    b = ctx.block
    s = SeekingSettings(train=ctx.train_settings(), seed_examples=int(b.get("seed_examples", 32)),
                        rank=ctx.common.lora.r, modules=tuple(b.get("modules") or ctx.common.lora.targets))
    outside = sorted(set(s.modules) - set(ctx.common.lora.targets))
    if outside:
        raise PipelineError(f"baselines.seeking.modules {outside} have no LoRA adapter to inject into",
                            "add them to baselines.lora.targets or drop them from baselines.seeking.modules")
    if s.seed_examples < 1:
        raise PipelineError("baselines.seeking.seed_examples must be at least 1", "the paper uses 32")
    ctx.require_models(source=True)
    ctx.require_splits(SEED_SPLIT, "transfer")
    ctx.require_deeper_source()
    return s


# --- 1. sensitivity -------------------------------------------------------------------------
def example_losses(model: nn.Module, data: EncodedSplit, shard: Shard = SINGLE):
    """Yield the mean CE on its supervised positions of each example this process takes (batch
    of one: |.| is per example), with a progress bar."""
    from tqdm import tqdm

    adapter = ModelAdapter(model)
    mine = [i for i, _ in shard.mine(range(len(data.input_ids)))]
    for i in tqdm(mine, desc="seeking sensitivity", mininterval=5.0, leave=False):
        ids, mask, sup = trim(data, torch.tensor([i]))
        if sup.any():
            yield supervised_ce(adapter.supervised_logits(ids, mask, sup), ids, sup)


def sensitivity(model: nn.Module, data: EncodedSplit, roles: tuple[str, ...], shard: Shard = SINGLE
                ) -> tuple[list[float], dict[Key, torch.Tensor]]:
    """Block scores (all block parameters) and per-weight fp32 sensitivities of the ``roles`` matrices.

    Every gradient is folded into its block's buffers by a post-accumulate hook and freed
    at once, so no full-model gradient exists at any time; only block parameters take part
    (embedding and LM head gradients, V x D each, are never formed). Data parallel
    (``shard``): each process takes every world-th example and the sums are added over the
    processes; the per-example terms are independent, so only the order of float additions
    differs from one process.
    """
    adapter = ModelAdapter(model)
    weights = {(k, r): adapter.linear(k, r).weight for k in range(1, adapter.n_layers + 1) for r in roles}
    wanted = {id(w): key for key, w in weights.items()}
    # on each weight's own device: a source spread over GPUs keeps its sensitivities beside it
    per_weight = {key: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for key, w in weights.items()}
    block_sums = torch.zeros(adapter.n_layers, dtype=torch.float64)
    was = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    handles = []

    def fold(k: int):
        def hook(p: torch.Tensor) -> None:
            s = (p.detach().float() * p.grad.float()).abs()
            block_sums[k - 1] += float(s.sum(dtype=torch.float64))
            key = wanted.get(id(p))
            if key is not None:
                per_weight[key] += s
            p.grad = None

        return hook

    for k in range(1, adapter.n_layers + 1):
        for p in adapter.block(k).parameters():
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(fold(k)))
    try:
        for loss in example_losses(model, data, shard):
            loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p, flag in was.items():
            p.requires_grad_(flag)
    shard.all_sum([block_sums, *per_weight.values()])
    return block_sums.tolist(), per_weight


# --- 2. layers ------------------------------------------------------------------------------
def select_layers(scores: list[float], n_target: int) -> list[int]:
    """The ``n_target`` highest-scoring source blocks (1-based), in their original order."""
    if n_target > len(scores):
        raise PipelineError(f"the target has more blocks ({n_target}) than the source ({len(scores)})",
                            "SEEKING transfers from a deeper source; swap models/source and models/target")
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n_target]
    return [i + 1 for i in sorted(ranked)]


# --- 3. sub-matrix --------------------------------------------------------------------------
def window_sums(sens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sum of every (height, width) window of ``sens``: (n - height + 1, m - width + 1), float64."""
    n, m = sens.shape
    table = torch.zeros(n + 1, m + 1, dtype=torch.float64)
    table[1:, 1:] = sens.double().cumsum(0).cumsum(1)
    rows, cols = n - height + 1, m - width + 1
    return (table[height:height + rows, width:width + cols] - table[:rows, width:width + cols]
            - table[height:height + rows, :cols] + table[:rows, :cols])


def best_window(sens: torch.Tensor, height: int, width: int) -> tuple[int, int]:
    """Top-left corner of the window with the largest summed sensitivity (first in row-major order on ties)."""
    sums = window_sums(sens, height, width)
    flat = int(torch.argmax(sums))
    return divmod(flat, sums.shape[1])


def extract_block(weight: torch.Tensor, sens: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The target-shaped window of a source matrix; where the target is larger on an axis, the
    whole source axis is taken and the rest is zero (that axis has nothing to choose)."""
    n_t, m_t = shape
    h, w = min(n_t, weight.shape[0]), min(m_t, weight.shape[1])
    i, j = best_window(sens, h, w)
    out = torch.zeros(n_t, m_t, dtype=torch.float64)
    out[:h, :w] = weight[i:i + h, j:j + w].double()
    return out


# --- 4. factorisation -----------------------------------------------------------------------
def svd_factors(block: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B = U_r S_r (n, r), A = V_r^T (r, m): B A is the best rank-r approximation of ``block``."""
    u, s, vh = torch.linalg.svd(block.double(), full_matrices=False)
    r = min(rank, s.shape[0])
    b = torch.zeros(block.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, block.shape[1], dtype=torch.float64)
    b[:, :r], a[:r] = u[:, :r] * s[:r], vh[:r]
    return b, a


def extract_factors(source: nn.Module, target: nn.Module, seed_data: EncodedSplit, s: SeekingSettings,
                    shard: Shard = SINGLE) -> tuple[dict[Key, tuple[torch.Tensor, torch.Tensor]], dict]:
    """Steps 1-4: (B, A) per (target block, module), on the CPU, and a record of the choices.
    The sensitivity pass is data parallel over ``shard``; windows and SVDs (float64, one
    matrix at a time) run on the CPU in every process, which all get the same factors."""
    src, tgt = ModelAdapter(source), ModelAdapter(target)
    scores, sens = sensitivity(source, seed_data, s.modules, shard)
    layers = select_layers(scores, tgt.n_layers)
    factors = {}
    for k, l in enumerate(layers, start=1):
        for role in s.modules:
            weight = src.linear(l, role).weight.detach().cpu()
            shape = tuple(tgt.linear(k, role).weight.shape)
            factors[(k, role)] = svd_factors(extract_block(weight, sens.pop((l, role)).cpu(), shape), s.rank)
    record = {"layer_scores": scores, "source_layers": layers, "modules": list(s.modules), "rank": s.rank}
    return factors, record


# --- 5. injection ---------------------------------------------------------------------------
@torch.no_grad()
def inject(peft_model, factors: dict[Key, tuple[torch.Tensor, torch.Tensor]], scale: float) -> None:
    """LoRA := (B, A) and base := W - scale * B A, so base + scale * B A is W again."""
    for (k, role), (b, a) in factors.items():
        layer = lora.lora_layer(peft_model, k, role)
        base = layer.get_base_layer().weight
        base.sub_((scale * (b @ a)).to(base.device, base.dtype))
        layer.lora_A["default"].weight.copy_(a.to(base.dtype))  # copy_ moves it to the adapter's device
        layer.lora_B["default"].weight.copy_(b.to(base.dtype))


def run(ctx: Context, s: SeekingSettings) -> Result:
    tok = ctx.tokenizer()
    seed_data = ctx.encode(tok, SEED_SPLIT, limit=s.seed_examples)
    transfer = ctx.encode(tok, "transfer")
    with ctx.cost.phase("load"):
        source, target = ctx.load_source(), ctx.load_target()
    with ctx.cost.phase("extract"):
        factors, record = extract_factors(source, target, seed_data, s, ctx.shard)
    del source
    gc.collect()
    model = lora.attach(target, ctx.common.lora)
    inject(model, factors, ctx.common.lora.scale)
    del factors
    merged, log = finetune(ctx, model, transfer, s.train, f"seeking {ctx.task} s{ctx.seed}")
    record.update(train=log, n_seed_examples=len(seed_data.ids), n_examples=len(transfer.ids))
    return Result(merged, tok, record)
