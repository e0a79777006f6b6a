"""Shallow-to-deep frontier alignment: train target block k alone.

Stage k reads h^(k-1) of the transfer split, as produced by stage k-1 (so blocks below k
never run again), trains only block k (all of it, or LoRA on it through PEFT, merged
afterwards) against the source-side supervision of layer k, and writes the trained block
plus h^(k) for stage k+1. Blocks > k keep their original weights. The layer objective
touches only the K LM-head rows it needs; the final block is trained with output KL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pipeline.adapter import ModelAdapter
from pipeline.artifacts import check_finite
from pipeline.data import batches
from pipeline.errors import PipelineError
from pipeline.loading import torch_dtype
from pipeline.objectives import check_objective, cosine_loss, fisher_loss, output_kl, relation_loss
from pipeline.params import fisher_tau, section

TRAINABLE = ("full", "lora")


@dataclass
class FrontierConfig:
    objective: str = "fisher"
    steps: int = 20
    lr: float = 1e-4
    batch_size: int = 4
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    tau: float = 1.0  # fisher.tau, the temperature the fisher stage built p~ with (not a frontier key)
    tau_out: float = 1.0
    kl_every_stage: bool = False
    beta: float = 1.0
    trainable: str = "full"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["v_proj", "o_proj", "up_proj", "down_proj"])
    compute_dtype: str = "float32"
    seed: int = 0

    def validate(self) -> None:
        check_objective(self.objective)
        if self.trainable not in TRAINABLE:
            raise PipelineError(f"unknown frontier.trainable {self.trainable!r}", f"use one of {TRAINABLE}")
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise PipelineError(f"frontier needs steps >= 0, batch_size >= 1, lr > 0 (got {self.steps}, "
                                f"{self.batch_size}, {self.lr})", "fix the frontier block of params.yaml")
        torch_dtype(self.compute_dtype)
        if not (self.tau > 0 and self.tau_out > 0):
            raise PipelineError(f"temperatures must be > 0 (got fisher.tau {self.tau}, frontier.tau_out "
                                f"{self.tau_out})", "fix them in params.yaml")


def frontier_config(params: dict, seed: int) -> FrontierConfig:
    """The frontier block of params.yaml as a FrontierConfig, for the run with ``seed``.

    The surrogate's temperature is read from ``fisher.tau``: p~ (fisher stage) and the scaling
    of d (here) must share it. A leftover ``frontier.tau`` is refused rather than ignored, so
    an old params file cannot silently train with a temperature nobody set.
    """
    f = dict(section(params, "frontier"))
    if "tau" in f:
        raise PipelineError(f"params.yaml sets frontier.tau ({f['tau']!r}), which moved to fisher.tau: one "
                            "temperature builds p~ (fisher stage) and scales d (frontier stages)",
                            f"delete frontier.tau; if its value was meant, set fisher.tau to it "
                            f"(now {params.get('fisher', {}).get('tau')!r})")
    lora = f.pop("lora", {}) or {}
    known = set(FrontierConfig.__dataclass_fields__) - {"tau", "seed"}
    unknown = sorted(set(f) - known)
    if unknown:
        raise PipelineError(f"unknown frontier params {unknown}", f"use only {sorted(known)} (and lora:)")
    cfg = FrontierConfig(**f, tau=fisher_tau(params), lora_r=lora.get("r", 16), lora_alpha=lora.get("alpha", 16),
                         lora_dropout=lora.get("dropout", 0.05),
                         lora_targets=list(lora.get("targets", FrontierConfig().lora_targets)),
                         seed=seed)
    cfg.validate()
    return cfg


@dataclass
class States:
    """Residual stream entering a block on the transfer split.

    hidden: (N, T, D_t); attention_mask: (N, T); supervised: (N, T) bool.
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    supervised: torch.Tensor

    def offsets(self) -> torch.Tensor:
        return torch.cat([torch.zeros(1, dtype=torch.long), self.supervised.sum(1).cumsum(0)])


@dataclass
class LayerTargets:
    """Supervision of block k at the P supervised positions (rows in example, position order)."""

    topk_ids: torch.Tensor  # (P, K)
    topk_logits: torch.Tensor  # (P, K) aligned logits z~
    topk_probs: torch.Tensor  # (P, K) renormalised p~
    aligned: torch.Tensor  # (P, D_t) h~_k
    aligned_prev: torch.Tensor | None = None  # (P, D_t) h~_{k-1}, for the relation objective


@dataclass
class OutputTargets:
    """The source's output logits at the same P positions: top-K ids and values."""

    topk_ids: torch.Tensor
    topk_logits: torch.Tensor


@dataclass
class FrontierResult:
    block_state: dict[str, torch.Tensor]
    states_out: torch.Tensor  # (N, T, D_t) h^(k) with the trained block, in the compute dtype
    losses: list[float]
    objective_before: float
    objective_after: float


def _rows(offsets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in idx.tolist()])


def _make_trainable(block: torch.nn.Module, cfg: FrontierConfig):
    """Returns (module to optimise, finish) where finish() merges LoRA back into plain weights."""
    if cfg.trainable == "full":
        block.requires_grad_(True)
        return block, lambda: block
    from peft import LoraConfig, get_peft_model

    peft_block = get_peft_model(block, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                  lora_dropout=cfg.lora_dropout, target_modules=cfg.lora_targets))
    return peft_block, peft_block.merge_and_unload


class _Stage:
    """The objective of one stage, bound to its model, data and config."""

    def __init__(self, adapter: ModelAdapter, k: int, states: States, targets: LayerTargets | None,
                 output: OutputTargets | None, cfg: FrontierConfig, model_dtype: torch.dtype) -> None:
        self.a, self.k, self.s, self.t, self.o, self.cfg = adapter, k, states, targets, output, cfg
        self.is_last = k == adapter.n_layers
        self.compute = torch_dtype(cfg.compute_dtype)
        self.model_dtype = model_dtype
        self.offsets = states.offsets()

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        return self.loss_and_states(idx)[0]

    def loss_and_states(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective on examples ``idx`` and the block's output h^(k) for them."""
        h_in = self.s.hidden[idx].to(self.compute)
        attn, mask = self.s.attention_mask[idx], self.s.supervised[idx]
        h_out = self.a.run_blocks(h_in, attn, self.k, self.k)
        return self._objective(idx, h_in, h_out, attn, mask), h_out

    def _objective(self, idx, h_in, h_out, attn, mask) -> torch.Tensor:
        rows = _rows(self.offsets, idx)
        h_sup = h_out[mask]
        if self.is_last:
            return output_kl(self.a, h_sup, self.o.topk_ids[rows], self.o.topk_logits[rows], self.cfg.tau_out)
        t = self.t
        if self.cfg.objective == "fisher":
            loss = fisher_loss(self.a, h_sup, t.topk_ids[rows], t.topk_logits[rows], t.topk_probs[rows], self.cfg.tau)
        elif self.cfg.objective == "cosine":
            loss = cosine_loss(h_sup, t.aligned[rows])
        else:
            sub = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)])
            loss = relation_loss(h_sup - h_in[mask], t.aligned[rows] - t.aligned_prev[rows], sub)
        if self.cfg.kl_every_stage:
            h_last = self.a.run_blocks(h_out.to(self.model_dtype), attn, self.k + 1, self.a.n_layers)
            loss = loss + self.cfg.beta * output_kl(self.a, h_last[mask].to(self.compute),
                                                    self.o.topk_ids[rows], self.o.topk_logits[rows], self.cfg.tau_out)
        return loss

    @torch.no_grad()
    def mean_loss(self, collect: bool = False) -> tuple[float, torch.Tensor | None]:
        """The objective over the whole transfer split (weighted by batch size), and with
        ``collect`` the block's outputs h^(k), (N, T, D_t), from the same pass."""
        n = self.s.hidden.shape[0]
        total, outs = 0.0, []
        for sl in batches(n, self.cfg.batch_size):
            idx = torch.arange(sl.start, sl.stop)
            loss, h_out = self.loss_and_states(idx)
            total += float(loss) * len(idx)
            if collect:
                outs.append(h_out)
        return total / n, (torch.cat(outs) if collect else None)


def check_inputs(adapter: ModelAdapter, k: int, states: States, targets: LayerTargets | None,
                 output: OutputTargets | None, cfg: FrontierConfig) -> None:
    """Everything a stage needs, checked before any training."""
    cfg.validate()
    adapter.check_layer(k, "frontier layer")
    p = int(states.supervised.sum())
    if states.hidden.shape[-1] != adapter.width:
        raise PipelineError(f"states have width {states.hidden.shape[-1]}, target block {k} expects {adapter.width}",
                            "the chain's previous stage was made for another target model: re-run the chain")
    needs_output = k == adapter.n_layers or cfg.kl_every_stage
    if needs_output and (output is None or output.topk_ids.shape[0] != p):
        raise PipelineError(f"stage {k} needs the source's output logits at {p} positions",
                            "re-run the extract stage for this task")
    if k < adapter.n_layers:
        if targets is None or targets.topk_ids.shape[0] != p:
            raise PipelineError(f"supervision for layer {k} does not match the {p} supervised positions",
                                "re-run the fisher stage for this task (and the extract stage before it)")
        if cfg.objective == "relation" and targets.aligned_prev is None:
            raise PipelineError("the relation objective needs the aligned state of layer k-1",
                                "re-run the fisher stage, which writes every layer's aligned state")


def train_block(adapter: ModelAdapter, k: int, states: States, targets: LayerTargets | None,
                output: OutputTargets | None, cfg: FrontierConfig, progress: bool = True,
                store_dtype: torch.dtype | None = None) -> FrontierResult:
    """Train block k (1-based) alone and propagate the transfer split through it.

    With ``store_dtype`` the trained weights are rounded to it before propagating, so h^(k)
    is exactly what the exported (stored-precision) block k computes from the same h^(k-1).
    End to end the match is not exact: the stages store h^(k) in the storage dtype between
    blocks, the exported model's forward does not round between blocks; in bf16 the two
    agree to within a few roundings (tests/test_method.py bounds it at 1 % per position).
    """
    check_inputs(adapter, k, states, targets, output, cfg)
    block = adapter.block(k)
    model_dtype = next(block.parameters()).dtype
    compute = torch_dtype(cfg.compute_dtype)
    adapter.model.requires_grad_(False)
    adapter.final_norm.to(compute)
    adapter.model.get_output_embeddings().to(compute)
    block.to(compute)
    torch.manual_seed(cfg.seed + k)
    module, finish = _make_trainable(block, cfg)
    params = [p for p in module.parameters() if p.requires_grad]
    stage = _Stage(adapter, k, states, targets, output, cfg, model_dtype)

    before, _ = stage.mean_loss()
    check_finite("the frontier objective", before, f"stage {k} (before training)")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + k)
    n = states.hidden.shape[0]
    order: list[int] = []
    losses: list[float] = []
    module.train()
    for step in tqdm(range(cfg.steps), desc=f"frontier L{k:02d}", disable=not progress):
        if len(order) < cfg.batch_size:
            order += torch.randperm(n, generator=gen).tolist()
        idx, order = torch.tensor(order[: cfg.batch_size]), order[cfg.batch_size:]
        loss = stage.loss(idx)
        check_finite("the frontier loss", loss, f"stage {k}, step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    module.eval()
    block = finish()
    block.requires_grad_(False)
    block.to(store_dtype or model_dtype)
    state = {name: t.detach().clone() for name, t in block.state_dict().items()}
    block.to(compute)
    if model_dtype == compute:
        # One pass gives both the objective of the stored (rounded) weights and h^(k).
        after, states_out = stage.mean_loss(collect=True)
    else:
        after, _ = stage.mean_loss()
        block.to(model_dtype)
        states_out = propagate(adapter, k, states, cfg.batch_size)
    block.to(model_dtype)
    return FrontierResult(state, states_out, losses, before, after)


@torch.no_grad()
def propagate(adapter: ModelAdapter, k: int, states: States, batch_size: int) -> torch.Tensor:
    """h^(k) = block_k(h^(k-1)) in the block's own dtype, as the exported model computes it."""
    dtype = next(adapter.block(k).parameters()).dtype
    outs = [adapter.run_blocks(states.hidden[sl].to(dtype), states.attention_mask[sl], k, k)
            for sl in batches(states.hidden.shape[0], batch_size)]
    return torch.cat(outs)


@torch.no_grad()
def embed_states(adapter: ModelAdapter, input_ids: torch.Tensor) -> torch.Tensor:
    """h^(0) of the transfer split: the chain's starting point."""
    return adapter.embed(input_ids)
