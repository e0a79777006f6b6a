"""Shallow-to-deep frontier alignment: train target block k alone.

Stage k reads h^(k-1) of the transfer split, as produced by stage k-1 (so blocks below k
never run again), trains only block k (all of it, or LoRA on it through PEFT, merged
afterwards) against the source-side supervision of layer k, and writes the trained block
plus h^(k) for stage k+1. Blocks > k keep their original weights. The layer objective
touches only the K LM-head rows it needs; the final block is trained with output KL.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import check_finite
from pipeline.core.data import batches
from pipeline.core.chain import block_number
from pipeline.core.errors import PipelineError
from pipeline.core.loading import torch_dtype
from pipeline.core.lora import LoraSettings, attach_block
from pipeline.method.objectives import check_objective, cosine_loss, fisher_loss, output_kl, relation_loss
from pipeline.compute.parallel import SINGLE, Shard
from pipeline.core.params import fisher_tau, section

TRAINABLE = ("full", "lora")
LORA_TARGETS = ("v", "o", "up", "down")  # the paper's: attention v, o and FFN up, down
INTERFACES = ("state", "residual")


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
    kl_from: int = 0  # first block trained with the output KL too (0: the last block only; -n: the last n)
    beta: float = 1.0  # weight of that output KL on blocks < L
    layer_weight: float = 1.0  # weight of the layer objective (blocks < L); 0 leaves only the output KL
    layer_from: int = 1  # first block with a layer objective (-n: the last n blocks); blocks below get none
    log_examples: int = 16  # examples the logged objective before/after training is measured on (0: all)
    interface: str = "state"  # what the layer objective reads: h^(k) or h^(k) - h^(k-1) (fisher.interface)
    trainable: str = "full"
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(targets=LORA_TARGETS))  # trainable: lora
    compute_dtype: str = "float32"
    seed: int = 0

    def validate(self) -> None:
        check_objective(self.objective)
        if self.trainable not in TRAINABLE:
            raise PipelineError(f"unknown frontier.trainable {self.trainable!r}", f"use one of {TRAINABLE}")
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.log_examples < 0:
            raise PipelineError(f"frontier needs steps >= 0, batch_size >= 1, lr > 0 (got {self.steps}, "
                                f"{self.batch_size}, {self.lr})", "fix the frontier block of params.yaml")
        if self.interface not in INTERFACES:
            raise PipelineError(f"unknown supervision interface {self.interface!r}",
                                f"set fisher.interface to one of {INTERFACES}")
        if self.layer_weight < 0 or self.beta < 0 or self.layer_from == 0:
            raise PipelineError(f"frontier needs layer_weight >= 0, beta >= 0, layer_from != 0 (got "
                                f"{self.layer_weight}, {self.beta}, {self.layer_from})",
                                "fix the frontier block of params.yaml")
        torch_dtype(self.compute_dtype)
        if not (self.tau > 0 and self.tau_out > 0):
            raise PipelineError(f"temperatures must be > 0 (got fisher.tau {self.tau}, frontier.tau_out "
                                f"{self.tau_out})", "fix them in params.yaml")

    def has_output_kl(self, k: int, n_layers: int) -> bool:
        """The last block always trains on the output KL; blocks from kl_from on add it to
        their layer objective (the v2 text's "output KL preserves source-level predictive
        behavior"), at the cost of running blocks k+1..L and the full LM head every step."""
        return k == n_layers or (self.kl_from != 0 and k >= block_number(self.kl_from, n_layers))

    def has_layer_objective(self, k: int, n_layers: int) -> bool:
        """Block k < L is trained on its layer objective unless it lies below layer_from or
        the objective has weight 0; the last block always trains on the output KL."""
        return k < n_layers and k >= block_number(self.layer_from, n_layers) and self.layer_weight > 0

    def trains(self, k: int, n_layers: int) -> bool:
        """Whether stage k has any objective at all; a stage without one keeps its block."""
        return self.has_output_kl(k, n_layers) or self.has_layer_objective(k, n_layers)


def frontier_config(params: dict, seed: int) -> FrontierConfig:
    """The frontier block of params.yaml as a FrontierConfig, for the run with ``seed``.

    The surrogate's temperature is read from ``fisher.tau`` and the supervision interface from
    ``fisher.interface``: the fisher stage built its statistics with both. A leftover
    ``frontier.tau`` or ``frontier.kl_every_stage`` is refused rather than ignored, so an old
    params file cannot silently train with a setting nobody chose.
    """
    f = dict(section(params, "frontier"))
    if "tau" in f:
        raise PipelineError(f"params.yaml sets frontier.tau ({f['tau']!r}), which moved to fisher.tau: one "
                            "temperature builds p~ (fisher stage) and scales d (frontier stages)",
                            f"delete frontier.tau; if its value was meant, set fisher.tau to it "
                            f"(now {params.get('fisher', {}).get('tau')!r})")
    if "kl_every_stage" in f:
        raise PipelineError("frontier.kl_every_stage has become frontier.kl_from (the first block trained with the "
                            "output KL too)", "replace `kl_every_stage: true` by `kl_from: 1` and "
                            "`kl_every_stage: false` by `kl_from: 0` in params.yaml")
    lora = LoraSettings.from_params(f.pop("lora", None), "frontier.lora", LORA_TARGETS)
    from pipeline.compute.placement import settings

    train_dtype = settings(params).train_dtype  # frontier.compute_dtype moved to compute.train_dtype
    known = set(FrontierConfig.__dataclass_fields__) - {"tau", "interface", "seed", "compute_dtype", "lora"}
    unknown = sorted(set(f) - known)
    if unknown:
        raise PipelineError(f"unknown frontier params {unknown}", f"use only {sorted(known)} (and lora:)")
    f = {key: _number(f"frontier.{key}", value, FrontierConfig.__dataclass_fields__[key].type)
         for key, value in f.items()}
    cfg = FrontierConfig(**f, tau=fisher_tau(params), compute_dtype=train_dtype,
                         interface=str(section(params, "fisher").get("interface", "state")), lora=lora,
                         seed=seed)
    cfg.validate()
    return cfg


def _number(name: str, value, kind) -> object:
    """A numeric setting as its field's type. YAML 1.1 reads ``2e-5`` (no dot) as a string, which
    is what `dvc exp run -S frontier.lr=2e-5` writes; accept it rather than fail deep in training."""
    kind = getattr(kind, "__name__", kind)
    if kind not in ("int", "float") or isinstance(value, bool):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PipelineError(f"{name} must be a number, got {value!r}", f"set {name} in params.yaml") from None
    if kind == "int":
        if number != int(number):
            raise PipelineError(f"{name} must be a whole number, got {value!r}", f"set {name} in params.yaml")
        return int(number)
    return number


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
    aligned: torch.Tensor  # (P, D_t) h~_k, or the aligned source residual (fisher.interface)


@dataclass
class OutputTargets:
    """The source's output logits at the same P positions: top-K ids and values."""

    topk_ids: torch.Tensor
    topk_logits: torch.Tensor


@dataclass
class FrontierResult:
    block_state: dict[str, torch.Tensor]
    states_out: torch.Tensor | None  # (N, T, D_t) h^(k) with the trained block, in the compute dtype, on the
    # CPU (None on the processes other than the main one under data parallelism)
    losses: list[float]
    objective_before: float
    objective_after: float


def _rows(offsets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in idx.tolist()])


def _make_trainable(adapter: ModelAdapter, k: int, cfg: FrontierConfig):
    """Returns (module to optimise, finish) where finish() merges LoRA back into plain weights."""
    block = adapter.block(k)
    if cfg.trainable == "full":
        block.requires_grad_(True)
        return block, lambda: block
    peft_block = attach_block(block, adapter, cfg.lora)
    return peft_block, peft_block.merge_and_unload


class _Stage:
    """The objective of one stage, bound to its model, data and config."""

    def __init__(self, adapter: ModelAdapter, k: int, states: States, targets: LayerTargets | None,
                 output: OutputTargets | None, cfg: FrontierConfig, model_dtype: torch.dtype,
                 shard: Shard = SINGLE) -> None:
        self.a, self.k, self.s, self.t, self.o, self.cfg = adapter, k, states, targets, output, cfg
        self.is_last = k == adapter.n_layers
        self.compute = torch_dtype(cfg.compute_dtype)
        self.model_dtype = model_dtype
        self.offsets = states.offsets()
        self.shard = shard
        self.device = next(adapter.block(k).parameters()).device  # states stay on the CPU; batches move here

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h^(k-1), attention mask and supervised mask of examples ``idx`` on the block's device."""
        return (self.s.hidden[idx].to(self.device, self.compute), self.s.attention_mask[idx].to(self.device),
                self.s.supervised[idx].to(self.device))

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        """The training objective on the batch ``idx``.

        Under data parallelism each process runs the block (wrapped in DDP) on its contiguous
        share of ``idx`` only, and the objective is taken on the whole batch, the other shares
        entering as constants: every process holds the single-process loss L, whose gradient
        reaches only its own share's outputs. Scaled by the number of processes before
        backward (``train_block``), DDP's gradient average is then exactly dL/dtheta of one
        process, whatever the objective's form.
        """
        if self.shard.world == 1:
            return self.loss_and_states(idx)[0]
        h_in, attn, mask = self._batch(idx)
        shares = torch.tensor_split(torch.arange(len(idx)), self.shard.world)
        own = shares[self.shard.rank]
        h_own = self.a.run_blocks(h_in[own], attn[own], self.k, self.k)
        h_out = self.shard.all_gather_rows(h_own, [len(x) for x in shares])
        return self._objective(idx, h_in, h_out, attn, mask)

    def backward(self, idx: torch.Tensor, where: str) -> float:
        """The training objective on the batch ``idx``, its gradient added to the block's. Under
        data parallelism the loss is scaled by the number of processes first (see ``loss``)."""
        loss = self.loss(idx)
        check_finite("the frontier loss", loss, where)
        (loss * self.shard.world).backward()
        return float(loss.detach())

    def loss_and_states(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective on examples ``idx`` and the block's output h^(k) for them."""
        h_in, attn, mask = self._batch(idx)
        h_out = self.a.run_blocks(h_in, attn, self.k, self.k)
        return self._objective(idx, h_in, h_out, attn, mask), h_out

    def _objective(self, idx, h_in, h_out, attn, mask) -> torch.Tensor:
        rows = _rows(self.offsets, idx)
        if self.is_last:
            return output_kl(self.a, h_out[mask], self.o.topk_ids[rows], self.o.topk_logits[rows], self.cfg.tau_out)
        loss = h_out.sum() * 0
        if self.cfg.has_layer_objective(self.k, self.a.n_layers):
            loss = loss + self.cfg.layer_weight * self._layer_objective(rows, h_in, h_out, mask)
        if self.cfg.has_output_kl(self.k, self.a.n_layers):
            h_last = self.a.run_blocks(h_out.to(self.model_dtype), attn, self.k + 1, self.a.n_layers)
            loss = loss + self.cfg.beta * output_kl(self.a, h_last[mask].to(self.compute),
                                                    self.o.topk_ids[rows], self.o.topk_logits[rows], self.cfg.tau_out)
        return loss

    def _layer_objective(self, rows, h_in, h_out, mask) -> torch.Tensor:
        """The layer objective on the supervision interface: the residual stream h^(k) itself,
        or the block's residual contribution h^(k) - h^(k-1) (the fisher stage built the
        aligned targets at the same interface)."""
        x = h_out[mask] if self.cfg.interface == "state" else (h_out - h_in)[mask]
        t = self.t
        if self.cfg.objective == "fisher":
            return fisher_loss(self.a, x, t.topk_ids[rows], t.topk_logits[rows], t.topk_probs[rows], self.cfg.tau)
        if self.cfg.objective == "cosine":
            return cosine_loss(x, t.aligned[rows])
        sub = torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0).cpu()])
        return relation_loss(x, t.aligned[rows], sub)

    @torch.no_grad()
    def mean_loss(self, n: int, collect: bool = False) -> tuple[float, torch.Tensor | None]:
        """The objective over the first ``n`` examples of the transfer split (weighted by batch
        size), and with ``collect`` the block's outputs h^(k), (n, T, D_t), from the same pass,
        on the CPU.

        Under data parallelism each process takes a share of the batches; every process gets
        the total (added in batch order, as one process does), the main one the outputs."""
        losses, outs = [], []
        for b, sl in self.shard.mine(batches(n, self.cfg.batch_size)):
            idx = torch.arange(sl.start, sl.stop)
            loss, h_out = self.loss_and_states(idx)
            losses.append((b, float(loss) * len(idx)))
            if collect:
                outs.append((b, h_out.cpu()))
        total = 0.0
        for part in sorted((p for ps in self.shard.all_gather(losses) for p in ps), key=lambda p: p[0]):
            total += part[1]
        merged = self.shard.gather(outs) if collect else None
        return total / n, (torch.cat(merged) if merged is not None else None)


def check_inputs(adapter: ModelAdapter, k: int, states: States, targets: LayerTargets | None,
                 output: OutputTargets | None, cfg: FrontierConfig) -> None:
    """Everything a stage needs, checked before any training."""
    cfg.validate()
    adapter.check_layer(k, "frontier layer")
    p = int(states.supervised.sum())
    if states.hidden.shape[-1] != adapter.width:
        raise PipelineError(f"states have width {states.hidden.shape[-1]}, target block {k} expects {adapter.width}",
                            "the chain's previous stage was made for another target model: re-run the chain")
    needs_output = cfg.has_output_kl(k, adapter.n_layers)
    if needs_output and (output is None or output.topk_ids.shape[0] != p):
        raise PipelineError(f"stage {k} needs the source's output logits at {p} positions",
                            "re-run the extract stage for this task")
    if cfg.has_layer_objective(k, adapter.n_layers):
        if targets is None or targets.topk_ids.shape[0] != p:
            raise PipelineError(f"supervision for layer {k} does not match the {p} supervised positions",
                                "re-run the fisher stage for this task (and the extract stage before it)")


def train_block(adapter: ModelAdapter, k: int, states: States, targets: LayerTargets | None,
                output: OutputTargets | None, cfg: FrontierConfig, progress: bool = True,
                store_dtype: torch.dtype | None = None, shard: Shard = SINGLE,
                on_step: Callable[[float], None] | None = None) -> FrontierResult:
    """Train block k (1-based) alone and propagate the transfer split through it.

    ``on_step`` gets each optimizer step's loss as the step ends (the stage's training log).

    With ``store_dtype`` the trained weights are rounded to it before propagating, so h^(k)
    is exactly what the exported (stored-precision) block k computes from the same h^(k-1).
    End to end the match is not exact: the stages store h^(k) in the storage dtype between
    blocks, the exported model's forward does not round between blocks; in bf16 the two
    agree to within a few roundings (tests/test_method.py bounds it at 1 % per position).
    With a ``shard`` of several processes the block trains under DDP (through Accelerate) on
    the same global batches.
    """
    check_inputs(adapter, k, states, targets, output, cfg)
    if not cfg.trains(k, adapter.n_layers):
        # No objective on this block: it keeps its weights, the split only passes through it.
        block = adapter.block(k)
        state = {name: t.detach().to(store_dtype or t.dtype).clone() for name, t in block.state_dict().items()}
        return FrontierResult(state, propagate(adapter, k, states, cfg.batch_size, shard), [], 0.0, 0.0)
    if shard.world > cfg.batch_size:
        raise PipelineError(f"frontier.batch_size {cfg.batch_size} is smaller than compute.processes {shard.world}",
                            "use a batch of at least one example per process, or fewer processes")
    block = adapter.block(k)
    device = next(block.parameters()).device
    targets, output = _on(targets, device), _on(output, device)
    model_dtype = next(block.parameters()).dtype
    compute = torch_dtype(cfg.compute_dtype)
    adapter.model.requires_grad_(False)
    adapter.final_norm.to(compute)
    adapter.model.get_output_embeddings().to(compute)
    block.to(compute)
    torch.manual_seed(cfg.seed + k)
    module, finish = _make_trainable(adapter, k, cfg)
    params = [p for p in module.parameters() if p.requires_grad]
    stage = _Stage(adapter, k, states, targets, output, cfg, model_dtype, shard)

    n = states.hidden.shape[0]
    # With the output KL a pass costs blocks k..L and the full LM head: log on a subset.
    n_log = n if cfg.log_examples == 0 else min(n, cfg.log_examples)
    before, _ = stage.mean_loss(n_log)
    check_finite("the frontier objective", before, f"stage {k} (before training)")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + k)
    order: list[int] = []
    losses: list[float] = []
    module.train()
    with data_parallel_block(adapter, k, shard):
        for step in tqdm(range(cfg.steps), desc=f"frontier L{k:02d}", disable=not progress):
            if len(order) < cfg.batch_size:
                order += torch.randperm(n, generator=gen).tolist()
            idx, order = torch.tensor(order[: cfg.batch_size]), order[cfg.batch_size:]
            opt.zero_grad(set_to_none=True)
            losses.append(stage.backward(idx, f"stage {k}, step {step}"))
            if on_step is not None:
                on_step(losses[-1])
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
    module.eval()
    block = finish()
    block.requires_grad_(False)
    block.to(store_dtype or model_dtype)
    state = {name: t.detach().clone() for name, t in block.state_dict().items()}
    block.to(compute)
    if model_dtype == compute and n_log == n:
        # One pass gives both the objective of the stored (rounded) weights and h^(k).
        after, states_out = stage.mean_loss(n, collect=True)
    else:
        after, _ = stage.mean_loss(n_log)
        block.to(model_dtype)
        states_out = propagate(adapter, k, states, cfg.batch_size, shard)
    block.to(model_dtype)
    return FrontierResult(state, states_out, losses, before, after)


def _on(targets, device: torch.device):
    """Supervision tensors (LayerTargets / OutputTargets, (P, K)-sized) moved to the block's device once."""
    if targets is None:
        return None
    return type(targets)(**{f: getattr(targets, f).to(device) if torch.is_tensor(getattr(targets, f))
                            else getattr(targets, f) for f in targets.__dataclass_fields__})


@contextlib.contextmanager
def data_parallel_block(adapter: ModelAdapter, k: int, shard: Shard):
    """Block k wrapped in DistributedDataParallel (through Accelerate) while it trains: the
    adapter runs whatever sits at its place in the block list, so the wrapper stands there
    and the plain block is put back afterwards. One process: nothing changes."""
    if shard.world == 1:
        yield
        return
    from accelerate import Accelerator

    blocks, block = adapter.blocks, adapter.block(k)
    accelerator = Accelerator(cpu=next(block.parameters()).device.type == "cpu", device_placement=False)
    blocks[k - 1] = accelerator.prepare_model(block, device_placement=False)
    try:
        yield
    finally:
        blocks[k - 1] = block


@torch.no_grad()
def propagate(adapter: ModelAdapter, k: int, states: States, batch_size: int,
              shard: Shard = SINGLE) -> torch.Tensor | None:
    """h^(k) = block_k(h^(k-1)) in the block's own dtype, as the exported model computes it
    (on the CPU; under data parallelism on the main process, None on the others)."""
    block = next(adapter.block(k).parameters())
    outs = [(b, adapter.run_blocks(states.hidden[sl].to(block.device, block.dtype),
                                   states.attention_mask[sl].to(block.device), k, k).cpu())
            for b, sl in shard.mine(batches(states.hidden.shape[0], batch_size))]
    merged = shard.gather(outs)
    return torch.cat(merged) if merged is not None else None


@torch.no_grad()
def embed_states(adapter: ModelAdapter, input_ids: torch.Tensor) -> torch.Tensor:
    """h^(0) of the transfer split: the chain's starting point."""
    return adapter.embed(input_ids)
