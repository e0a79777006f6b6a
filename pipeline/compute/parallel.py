"""Data parallelism over the processes of a ``torch.distributed`` group.

Inference stages split their work by whole batches: batch ``i`` of the single-process loop is
computed by process ``i % world``, with exactly the rows (and padding) it has in one process,
so every batch's numbers are those one process computes. The pieces are then gathered on the
main process in batch order, which writes the artifact once (atomically, as always). With
one process every helper here is the identity, so the library code reads the same either way.

Processes are started by :mod:`pipeline.compute.launch` (or by a user's own ``torchrun``); the
group is joined in :func:`join`, which :func:`pipeline.compute.placement.place` calls.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's part of the work: process ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1
    group: Any = field(default=None, compare=False, repr=False)  # gloo group: CPU objects travel through it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """``(index, item)`` of the items this process computes (round robin)."""
        return [(i, x) for i, x in enumerate(items) if i % self.world == self.rank]

    def gather(self, pieces: list[tuple[int, Any]]) -> list[Any] | None:
        """Every process's ``(index, result)`` pieces as one list in index order, on the main
        process; ``None`` on the others."""
        if self.world == 1:
            return [r for _, r in sorted(pieces, key=lambda p: p[0])]
        import torch.distributed as dist

        parts: list[Any] | None = [None] * self.world if self.is_main else None
        dist.gather_object(pieces, parts, dst=0, group=self.group)
        if parts is None:
            return None
        return [r for _, r in sorted((p for part in parts for p in part), key=lambda p: p[0])]

    def all_gather(self, piece: Any) -> list[Any]:
        """Every process's ``piece``, in rank order, on every process."""
        if self.world == 1:
            return [piece]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, piece, group=self.group)
        return out

    def all_gather_rows(self, rows: "torch.Tensor", sizes: list[int]) -> "torch.Tensor":
        """Every process's block of rows (process r holds ``sizes[r]`` of them), concatenated in
        rank order on every process, through the group's own backend (NCCL between GPUs). Only
        this process's block keeps its autograd history; the others arrive as constants."""
        import torch
        import torch.distributed as dist

        width = max(sizes)
        pad = rows.new_zeros((width - rows.shape[0], *rows.shape[1:]))
        received = [rows.new_empty((width, *rows.shape[1:])) for _ in range(self.world)]
        dist.all_gather(received, torch.cat([rows.detach(), pad]))
        return torch.cat([rows if r == self.rank else received[r][:sizes[r]] for r in range(self.world)])

    def data_parallel(self, loss_fn: Callable[[Any], Any], params: Sequence["torch.Tensor"]) -> Callable[[Any], Any]:
        """``loss_fn`` run through DistributedDataParallel (prepared by Accelerate) over
        ``params``: the backward of what it returns averages their gradients over the
        processes, bucketed and overlapped with the backward as DDP does. The loss functions
        call model parts (a backbone, projections, hypernetworks) rather than one module's
        forward, so the module DDP wraps holds the trained parameters themselves and its
        forward is the loss. One process: ``loss_fn`` itself."""
        if self.world == 1:
            return loss_fn
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        if not all(isinstance(p, torch.nn.Parameter) for p in params):
            # a plain tensor would be copied into a new Parameter that the loss never touches
            raise TypeError("data_parallel needs the trained tensors as nn.Parameter objects")

        class Loss(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.trained = torch.nn.ParameterList(params)

            def forward(self, batch):
                return loss_fn(batch)

        # unused: a loss term may skip some parameters in a step (LaTen's per-module deltas)
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
        accelerator = Accelerator(cpu=params[0].device.type == "cpu", device_placement=False, kwargs_handlers=[ddp])
        return accelerator.prepare_model(Loss(), device_placement=False)

    def mean_weighted(self, values: dict[str, float], weight: float) -> dict[str, float]:
        """sum over processes of value * weight / world: with the weights of a data-parallel
        step (share of the batch's units x world) the whole batch's value of a mean."""
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] * weight / self.world for k in keys], dtype=torch.float64)
        dist.all_reduce(t, group=self.group)
        return dict(zip(keys, t.tolist()))

    def all_sum(self, tensors: Sequence["torch.Tensor"]) -> None:
        """Sum each tensor over the processes, in place, on every process: through the group's
        own backend for GPU tensors (NCCL), through the gloo group for CPU ones."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t, group=self.group if t.device.type == "cpu" else None)

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)


SINGLE = Shard()


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; 0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_world() -> int:
    """Processes in the group this process was started in (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: str) -> Shard:
    """Join the process group the launcher started (NCCL between GPUs, gloo on CPUs)."""
    world = launched_world()
    if world == 1:
        return SINGLE
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        import atexit

        on_gpu = device.startswith("cuda")
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=datetime.timedelta(minutes=30),
                                device_id=torch.device(device) if on_gpu else None)
        atexit.register(leave)  # each process leaves the group when its stage ends
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return Shard(dist.get_rank(), dist.get_world_size(), group)


def leave() -> None:
    """Leave the process group (registered by :func:`join` to run when the process exits)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def shared_dir(path: str | os.PathLike, shard: Shard) -> Iterator[Path]:
    """An artifact directory every process writes its own files into, renamed into place once by
    the main process after all have finished (:func:`pipeline.core.artifacts.atomic_path` otherwise)."""
    from pipeline.core.artifacts import atomic_path

    if shard.world == 1:
        with atomic_path(path, is_dir=True) as tmp:
            yield tmp
        return
    if shard.is_main:
        with atomic_path(path, is_dir=True) as tmp:
            shard.broadcast(str(tmp))
            yield tmp
            shard.barrier()  # every process's files are in place before the rename
    else:
        tmp = Path(shard.broadcast(None))
        yield tmp
        shard.barrier()
