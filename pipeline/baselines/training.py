"""The one optimisation loop the baselines share: AdamW, warm-up then linear decay, clipping.

The loop knows nothing about models: it gets the trainable tensors and a ``loss_fn`` that
maps a batch of example indices to ``(loss, parts)``; ``parts`` (floats) are logged with the
loss each step. Example order comes from a seeded generator, so a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterable, Sequence

import torch

from pipeline.core.artifacts import check_finite
from pipeline.core.errors import PipelineError
from pipeline.compute.parallel import SINGLE, Shard

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, Any]]]  # parts: floats or 0-d tensors


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1
    max_steps: int = 0  # > 0: exactly this many steps, overriding epochs; 0: epochs x ceil(N / batch)
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    grad_clip: float = 1.0  # 0: no clipping

    @classmethod
    def from_params(cls, *blocks: dict[str, Any] | None, where: str = "baselines.train") -> "TrainSettings":
        """Later blocks override earlier ones (shared defaults, then a method's own ``train``)."""
        names = {f.name for f in fields(cls)}
        s = cls()
        for block in blocks:
            block = dict(block or {})
            unknown = set(block) - names
            if unknown:
                raise PipelineError(f"unknown keys {sorted(unknown)} in {where}", f"use {sorted(names)}")
            s = replace(s, **{k: type(getattr(cls, k))(v) for k, v in block.items()})
        if s.epochs < 1 or s.batch_size < 1 or s.lr <= 0 or s.max_steps < 0 or s.grad_clip < 0 \
                or not 0 <= s.warmup_ratio < 1:
            raise PipelineError(f"invalid training settings in {where}: {s}",
                                "use epochs >= 1, batch_size >= 1, lr > 0, max_steps >= 0, grad_clip >= 0, "
                                "0 <= warmup_ratio < 1")
        return s


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def n_steps(n_examples: int, settings: TrainSettings) -> int:
    """Optimizer steps of a run: ``max_steps`` when set (it overrides ``epochs``, as in the
    Hugging Face Trainer), else ``epochs`` passes of ceil(N / batch) steps."""
    return settings.max_steps or settings.epochs * steps_per_epoch(n_examples, settings.batch_size)


def plan(n_examples: int, settings: TrainSettings, seed: int) -> list[torch.Tensor]:
    """Example indices of every step: a fresh shuffle per epoch, cut into batches (an epoch's
    last batch may be smaller), for :func:`n_steps` steps.

    ``max_steps`` once only cut the epochs short, so with one epoch over 6 examples at batch 4
    the "4 steps" of params.yaml were 2; it now runs as many epochs as its steps need.
    """
    if n_examples < 1:
        raise PipelineError("there are no training examples", "check the split sizes in params.yaml")
    gen = torch.Generator().manual_seed(seed)
    want = n_steps(n_examples, settings)
    steps: list[torch.Tensor] = []
    while len(steps) < want:
        order = torch.randperm(n_examples, generator=gen)
        steps.extend(order[i:i + settings.batch_size] for i in range(0, n_examples, settings.batch_size))
    return steps[:want]


def _schedule(n_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = math.ceil(n_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (n_steps - step) / max(1, n_steps - warmup))

    return factor


def train(
    params: Sequence[torch.Tensor],
    steps: Sequence[torch.Tensor],
    loss_fn: LossFn,
    settings: TrainSettings,
    desc: str,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    shard: Shard = SINGLE,
    units: Callable[[torch.Tensor], int] | None = None,
) -> list[dict[str, float]]:
    """Run one optimiser step per entry of ``steps``; return the per-step log.

    Data parallel (``shard`` of several processes): each process takes a contiguous share of
    every global batch. ``loss_fn`` must then be a mean over ``units`` (supervised positions,
    say, as every on-device baseline's loss is): each process's loss is weighted by its share
    of the batch's units times the number of processes, so the gradients averaged over the
    processes by DDP (through Accelerate) during backward are the single-process gradients of the whole
    batch, and the logged loss is the whole batch's.
    """
    from tqdm import tqdm

    params = [p for p in params if p.requires_grad]
    if not params:
        raise PipelineError(f"{desc}: nothing to train", "check the LoRA targets / trainable modules")
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(len(steps), settings.warmup_ratio))
    log: list[dict[str, float]] = []
    forward = shard.data_parallel(loss_fn, params)  # DDP over the processes; loss_fn alone in one
    bar = tqdm(steps, desc=desc, mininterval=5.0, leave=False)
    for step, batch in enumerate(bar, start=1):
        rows, weight = batch, 1.0
        if shard.world > 1:
            if units is None or len(batch) < shard.world:
                raise PipelineError(f"{desc}: a data-parallel step needs a batch of at least one example per process "
                                    f"({len(batch)} examples, {shard.world} processes) and a loss counted in units",
                                    "raise the method's train.batch_size or lower compute.processes")
            rows = torch.tensor_split(batch, shard.world)[shard.rank]
            weight = units(rows) * shard.world / max(units(batch), 1)
        loss, parts = forward(rows)
        check_finite("loss", loss.detach(), desc)
        opt.zero_grad(set_to_none=True)
        (loss * weight).backward()  # under DDP the gradients arrive averaged over the processes
        grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip if settings.grad_clip else math.inf)
        opt.step()
        sched.step()
        values = {"loss": float(loss.detach()),
                  **{k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}}
        values = shard.mean_weighted(values, weight)
        entry = {"step": step, "loss": values.pop("loss"), "grad_norm": float(grad_norm),
                 "lr": sched.get_last_lr()[0], **values}
        log.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.4f}", refresh=False)
        if on_step is not None:
            on_step(step, entry)
    bar.close()
    return log


def positions(data) -> Callable[[torch.Tensor], int]:
    """The units a loss over supervised positions averages: how many the examples ``rows`` have."""
    return lambda rows: int(data.supervised[rows].sum())


def trainable(modules: Iterable[torch.nn.Module]) -> list[torch.Tensor]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]
