"""LaTen (Tan et al., ACL 2025; locate-then-align, "PrePKT").

1-2. Locate (``laten_locate``): keep L_t source blocks per sub-layer kind, i-th to i-th; rank
     the units of up/down/v/o in both models; the k-th best source unit pairs with the k-th
     best target unit; a transfer ``rate`` of the target's units is used.
3.   One hypernetwork per module kind (2-layer MLP, ReLU, D_s -> hidden -> D_t, no bias,
     tiny normal init) translates each selected source row/column (a D_s vector) into a
     target-shaped delta, added to the paired target row/column.
4.   Only the hypernetworks train, on a small alignment split: LM loss of the injected target
     + mse_weight * MSE(deltas, 0). No fine-tuning after injection.
5.   The checkpoint and the rate are chosen by the injected target's loss on the VALIDATION
     split (never the evaluation split); the chosen deltas are merged into the saved weights
     and the run fails if, after rounding to the saved dtype, nothing changed.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from pipeline.core.adapter import ModelAdapter
from pipeline.baselines import laten_locate as locate
from pipeline.baselines.context import Context, Result, trim
from pipeline.baselines.losses import supervised_ce
from pipeline.core.data import EncodedSplit, batches
from pipeline.core.errors import PipelineError
from pipeline.baselines.training import TrainSettings, plan, positions, train
from pipeline.compute.parallel import SINGLE, Shard

MODULES = ("up", "down", "v", "o")
ROWS = {"up": True, "v": True, "down": False, "o": False}  # units are rows (True) or columns of the weight
UNITS = {"up": "ffn", "down": "ffn", "v": "v", "o": "o"}  # which unit ranking a module uses
KEYS = {"train", "modules", "rate", "rates", "extract_examples", "align_examples", "val_examples",
        "mse_weight", "init_std", "hidden", "eval_every", "attribution_vocab"}

Key = tuple[int, str]  # (1-based target block, module)
# The paper's D_extract (locating) and D_align (training) are separate small sets; here the
# attribution split locates and the transfer split trains (pipeline.evaluation.budget caps by their sizes).
EXTRACT_SPLIT, ALIGN_SPLIT = "attribution", "transfer"


@dataclass(frozen=True)
class LatenSettings:
    train: TrainSettings
    modules: tuple[str, ...] = MODULES
    rate: float = 0.1  # rate the hypernetworks train with
    rates: tuple[float, ...] = (0.1,)  # rates tried on the validation split
    extract_examples: int = 20
    align_examples: int = 80
    val_examples: int = 32
    mse_weight: float = 1000.0
    init_std: float = 1e-5
    hidden: int = 0  # hypernetwork hidden width; 0: D_s (the paper)
    eval_every: int = 0  # checkpoint every this many steps (and at the end); 0: only the end
    attribution_vocab: int = 0  # unit attribution softmax over the readout's top tokens; 0: all (exact)


def prepare(ctx: Context) -> LatenSettings:
    unknown = set(ctx.block) - KEYS
    if unknown:
        raise PipelineError(f"unknown keys {sorted(unknown)} in baselines.laten", f"use {sorted(KEYS)}")
    b = ctx.block
    rate = float(b.get("rate", 0.1))
    s = LatenSettings(
        train=ctx.train_settings(), modules=tuple(b.get("modules") or MODULES), rate=rate,
        rates=tuple(float(r) for r in (b.get("rates") or [rate])),
        extract_examples=int(b.get("extract_examples", 20)), align_examples=int(b.get("align_examples", 80)),
        val_examples=int(b.get("val_examples", 32)), mse_weight=float(b.get("mse_weight", 1000.0)),
        init_std=float(b.get("init_std", 1e-5)), hidden=int(b.get("hidden", 0)), eval_every=int(b.get("eval_every", 0)),
        attribution_vocab=int(b.get("attribution_vocab", 0)))
    bad = sorted(set(s.modules) - set(MODULES))
    if bad:
        raise PipelineError(f"baselines.laten.modules {bad} are not transferable by LaTen", f"use a subset of {MODULES}")
    if not all(0 < r <= 1 for r in (s.rate, *s.rates)):
        raise PipelineError(f"LaTen rates must lie in (0, 1]: rate {s.rate}, rates {list(s.rates)}",
                            "set baselines.laten.rate / rates to fractions such as 0.1")
    if min(s.extract_examples, s.align_examples, s.val_examples) < 1 or min(s.eval_every, s.attribution_vocab) < 0 \
            or s.init_std <= 0:
        raise PipelineError("baselines.laten needs extract/align/val_examples >= 1, eval_every >= 0, "
                            "attribution_vocab >= 0, init_std > 0",
                            "fix those keys in params.yaml")
    ctx.require_models(source=True)
    ctx.require_splits(EXTRACT_SPLIT, ALIGN_SPLIT, "validation")
    ctx.require_deeper_source()
    return s


class Translator(nn.Module):
    """g(u) = W2 ReLU(W1 u): one source row/column (D_s) -> one target row/column (D_t)."""

    def __init__(self, d_source: int, hidden: int, d_target: int, init_std: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_source, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_target, bias=False)
        for layer in (self.w1, self.w2):
            nn.init.normal_(layer.weight, std=init_std)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.relu(self.w1(u)))


def unit_count(rate: float, n_target: int, n_source: int) -> int:
    return max(1, min(n_source, int(n_target * rate)))


class Transfer:
    """The located source vectors, their target slots, the hypernetworks and the current deltas."""

    def __init__(self, source: nn.Module, target: nn.Module, src: locate.Attribution, tgt: locate.Attribution,
                 s: LatenSettings) -> None:
        sa, ta = ModelAdapter(source), ModelAdapter(target)
        home = ta.lm_head.device  # translators, vectors and slots live beside the target
        top = max((s.rate, *s.rates))
        self.vectors: dict[Key, torch.Tensor] = {}  # (n_max, D_s), source units best first
        self.slots: dict[Key, torch.Tensor] = {}  # (n_max,) target unit indices, best first
        self.n_target_units: dict[Key, int] = {}
        self.n_source_units: dict[Key, int] = {}
        self.pairs: dict[str, dict[int, int]] = {}  # module -> target block -> source block
        for m in s.modules:
            kept = src.ffn_kept if UNITS[m] == "ffn" else src.attn_kept
            self.pairs[m] = dict(enumerate(kept, start=1))
            for k, l in self.pairs[m].items():
                w_s = sa.linear(l, m).weight.detach().float()
                units_s = getattr(src, f"{UNITS[m]}_units")[l]
                units_t = getattr(tgt, f"{UNITS[m]}_units")[k]
                n = unit_count(top, units_t.numel(), units_s.numel())
                pick = locate.ranked(units_s)[:n]
                self.vectors[(k, m)] = (w_s[pick.to(w_s.device)] if ROWS[m] else w_s[:, pick.to(w_s.device)].T).to(home)
                self.slots[(k, m)] = locate.ranked(units_t)[:n].to(ta.linear(k, m).weight.device)
                self.n_target_units[(k, m)] = units_t.numel()
                self.n_source_units[(k, m)] = units_s.numel()
        self.widths = (sa.width, s.hidden or sa.width, ta.width)
        self.translators = nn.ModuleDict()
        self.rate = s.rate
        self.deltas: dict[Key, torch.Tensor] = {}

    def count(self, key: Key) -> int:
        """Units of ``key`` transferred at the current rate (never more than were located)."""
        return min(self.vectors[key].shape[0], unit_count(self.rate, self.n_target_units[key], self.n_source_units[key]))

    def init_translators(self, init_std: float, dtype: torch.dtype) -> None:
        """One fresh translator per module kind (seeded by the caller), in ``dtype`` (the training
        dtype: the selected source vectors are float32), beside the vectors."""
        modules = sorted({m for _, m in self.vectors}, key=MODULES.index)
        device = next(iter(self.vectors.values())).device
        translators = nn.ModuleDict({m: Translator(*self.widths, init_std) for m in modules})
        self.translators = translators.to(device, dtype)

    def refresh(self) -> dict[str, torch.Tensor]:
        """Translate the selected vectors at the current rate (one pass per module kind);
        returns the concatenated deltas per module for the MSE term."""
        per_module = {}
        for m, g in self.translators.items():
            keys = [key for key in self.vectors if key[1] == m]
            counts = [self.count(key) for key in keys]
            out = g(torch.cat([self.vectors[key][:c] for key, c in zip(keys, counts)]))
            for key, chunk in zip(keys, out.split(counts)):
                self.deltas[key] = chunk
            per_module[m] = out
        return per_module

    def selection(self) -> dict[str, dict[int, list[int]]]:
        """Target unit indices that receive deltas at the current rate, per module and block."""
        out: dict[str, dict[int, list[int]]] = {}
        for (k, m), slots in self.slots.items():
            out.setdefault(m, {})[k] = sorted(slots[: self.count((k, m))].tolist())
        return out


class AddDeltas(nn.Module):
    """Parametrization: weight -> weight + the translated deltas at their target rows/columns."""

    def __init__(self, transfer: Transfer, key: Key) -> None:
        super().__init__()
        self._transfer, self._key = transfer, key  # a plain object: its translators stay out of the model

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        t, key = self._transfer, self._key
        delta = t.deltas[key].to(weight.device, weight.dtype)  # a spread target: this block may sit on another GPU
        idx = t.slots[key][: delta.shape[0]]
        return weight.index_add(0, idx, delta) if ROWS[key[1]] else weight.index_add(1, idx, delta.T)


def install(target: nn.Module, transfer: Transfer) -> None:
    """Freeze the target and route its transferred weights through :class:`AddDeltas`."""
    adapter = ModelAdapter(target)
    target.requires_grad_(False)
    with torch.no_grad():
        transfer.refresh()  # the parametrizations are evaluated once on registration
    for key in transfer.vectors:
        parametrize.register_parametrization(adapter.linear(*key), "weight", AddDeltas(transfer, key))


def merge(target: nn.Module, transfer: Transfer, save_dtype: torch.dtype) -> int:
    """Fold the current deltas into the weights; return how many elements change in ``save_dtype``."""
    adapter = ModelAdapter(target)
    changed = 0
    with torch.no_grad():
        transfer.refresh()
        for key in transfer.vectors:
            module = adapter.linear(*key)
            before = module.parametrizations.weight.original.to(save_dtype, copy=True)  # removal overwrites it in place
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            changed += int((module.weight.to(save_dtype) != before).sum())
    return changed


@torch.no_grad()
def validation_loss(adapter: ModelAdapter, data: EncodedSplit, batch_size: int, shard: Shard = SINGLE) -> float:
    """Mean CE over all supervised positions of ``data`` (position-weighted across batches).
    Data parallel: each process scores every world-th batch; the batch sums are added in
    batch order on every process, so all get the one-process number."""
    pieces = []
    for i, rows in shard.mine(batches(len(data.ids), batch_size)):
        ids, mask, sup = trim(data, torch.arange(rows.start, rows.stop))
        n = int(sup.sum())
        ce = float(supervised_ce(adapter.supervised_logits(ids, mask, sup), ids, sup)) if n else 0.0
        pieces.append((i, ce * n, n))
    total, count = 0.0, 0
    for _, ce_sum, n in sorted(p for part in shard.all_gather(pieces) for p in part):
        total += ce_sum
        count += n
    return total / max(count, 1)


def select(adapter: ModelAdapter, transfer: Transfer, checkpoints: dict[int, dict], rates: tuple[float, ...],
           validation: EncodedSplit, batch_size: int, shard: Shard = SINGLE) -> tuple[int, float, list[dict]]:
    """The (checkpoint step, rate) with the lowest validation loss, and the whole table."""
    table = []
    for step, state in checkpoints.items():
        transfer.translators.load_state_dict(state)
        for rate in rates:
            transfer.rate = rate
            with torch.no_grad():
                transfer.refresh()
            table.append({"step": step, "rate": rate,
                          "val_loss": validation_loss(adapter, validation, batch_size, shard)})
    best = min(table, key=lambda row: row["val_loss"])
    return best["step"], best["rate"], table


def run(ctx: Context, s: LatenSettings) -> Result:
    tok = ctx.tokenizer()
    extract = ctx.encode(tok, EXTRACT_SPLIT, limit=s.extract_examples)
    align = ctx.encode(tok, ALIGN_SPLIT, limit=s.align_examples)
    validation = ctx.encode(tok, "validation", limit=s.val_examples)
    with ctx.cost.phase("load"):
        source, target = ctx.load_source(), ctx.load_target()
    n_target = ModelAdapter(target).n_layers
    with ctx.cost.phase("locate"):
        src_attr = locate.attribute(source, extract, tok, n_target, s.attribution_vocab, ctx.shard)
        tgt_attr = locate.attribute(target, extract, tok, n_target, s.attribution_vocab, ctx.shard)
        transfer = Transfer(source, target, src_attr, tgt_attr, s)
    del source
    gc.collect()
    adapter = ModelAdapter(target)
    with ctx.cost.phase("select"):
        target_val = validation_loss(adapter, validation, s.train.batch_size, ctx.shard)  # reference: no injection
    torch.manual_seed(ctx.seed)
    transfer.init_translators(s.init_std, ctx.train_dtype)
    install(target, transfer)

    def loss_fn(rows: torch.Tensor):
        per_module = transfer.refresh()
        ids, mask, sup = trim(align, rows)
        ce = supervised_ce(adapter.supervised_logits(ids, mask, sup), ids, sup)
        mse = sum(d.pow(2).mean() for d in per_module.values())
        return ce + s.mse_weight * mse, {"ce": ce, "mse": mse}

    steps = plan(len(align.ids), s.train, ctx.seed)
    checkpoints: dict[int, dict] = {}

    def keep(step: int, entry: dict) -> None:
        ctx.log_step(step, entry)
        if (s.eval_every and step % s.eval_every == 0) or step == len(steps):
            checkpoints[step] = {k: v.detach().clone() for k, v in transfer.translators.state_dict().items()}

    transfer.rate = s.rate
    with ctx.cost.phase("align"):
        log = train(list(transfer.translators.parameters()), steps, loss_fn, s.train,
                    f"laten {ctx.task} s{ctx.seed}", on_step=keep, betas=(0.9, 0.95), shard=ctx.shard,
                    units=positions(align))
    with ctx.cost.phase("select"):
        step, rate, table = select(adapter, transfer, checkpoints, s.rates, validation, s.train.batch_size, ctx.shard)
    transfer.translators.load_state_dict(checkpoints[step])
    transfer.rate = rate
    selection = transfer.selection()
    changed = merge(target, transfer, ctx.save_dtype())
    if changed == 0:
        raise PipelineError(
            "the LaTen deltas vanish when the weights are rounded to the saved dtype: the saved model would "
            "equal the target",
            "set baselines.save_dtype: float32, or train the hypernetworks longer / with a larger lr "
            "(baselines.laten.train)")
    record = {"train": log, "chosen": {"step": step, "rate": rate}, "validation": table, "target_val_loss": target_val,
              "changed_elements": changed, "selection": selection, "pairs": transfer.pairs,
              "layer_importance": {"source": {"attn": src_attr.attn_layer, "ffn": src_attr.ffn_layer},
                                   "target": {"attn": tgt_attr.attn_layer, "ffn": tgt_attr.ffn_layer}},
              "n_extract": len(extract.ids), "n_align": len(align.ids), "n_validation": len(validation.ids)}
    return Result(target.eval(), tok, record)
