"""Where models compute, in which precision, in which process: the ``compute`` block of params.yaml.

This is the one place that decides device, dtype and process placement; stages ask it
(:func:`place`) and never pick a device themselves::

    compute:
      device: auto        # auto | cpu | cuda | cuda:N  (auto: the GPU when there is one)
      dtype:              # precision models compute in, per kind of device (or one name for all)
        cuda: bfloat16
        cpu: float32
      train_dtype: float32  # weights being trained and their optimiser state
      processes: 1        # data-parallel processes per stage (see pipeline.compute.launch); auto: one per GPU
      gpu_reserve: 0.2    # share of each GPU kept free for activations when placing weights

Reading the block needs no torch (:func:`settings`; the launcher uses it before deciding to
start processes). :func:`place` resolves it on this machine: a device that is not there fails
at once, before any model is loaded; under several processes it joins the process group
and gives process i GPU i.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    import torch

    from pipeline.compute.parallel import Shard

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_KINDS = ("cuda", "cpu")
KEYS = {"device", "dtype", "train_dtype", "processes", "gpu_reserve"}

# Keys that held part of this setting before it was one block: an old params.yaml names them.
MOVED = {
    ("models", "compute_dtype"): "compute.dtype",
    ("frontier", "compute_dtype"): "compute.train_dtype",
    ("baselines", "compute_dtype"): "compute.dtype",
    ("attribution", "dtype"): "compute.dtype",
    ("evaluation", "dtype"): "compute.dtype",
    ("evaluation", "device"): "compute.device",
}


@dataclass(frozen=True)
class ComputeSettings:
    """The ``compute`` block as written (validated, not yet resolved on this machine)."""

    device: str = "auto"
    dtype: dict[str, str] = field(default_factory=lambda: {"cuda": "bfloat16", "cpu": "float32"})
    train_dtype: str = "float32"
    processes: int | str = 1  # or "auto": one per GPU (see process_count)
    gpu_reserve: float = 0.2


def check_moved(params: dict[str, Any]) -> None:
    """An old params.yaml fails naming the key that replaced what it sets."""
    for (block, key), new in MOVED.items():
        if isinstance(params.get(block), dict) and key in params[block]:
            raise PipelineError(f"params.yaml sets {block}.{key}, which has moved to {new}",
                                f"delete {block}.{key} and set {new} in the compute block "
                                "(README, 'Running on GPUs and clusters')")


def settings(params: dict[str, Any]) -> ComputeSettings:
    """The validated ``compute`` block (defaults where it is absent). No torch import."""
    check_moved(params)
    block = params.get("compute") or {}
    if not isinstance(block, dict):
        raise PipelineError(f"compute must be a block of settings, got {block!r}",
                            "write compute: with device, dtype, train_dtype, processes (see params.yaml)")
    unknown = sorted(set(block) - KEYS)
    if unknown:
        raise PipelineError(f"unknown compute settings {unknown}", f"use only {sorted(KEYS)}")
    default = ComputeSettings()
    device = str(block.get("device", default.device))
    if not DEVICE.match(device):
        raise PipelineError(f"compute.device is {device!r}", "use auto, cpu, cuda or cuda:N (N: a GPU index)")
    dtype = block.get("dtype", default.dtype)
    dtype = {kind: dtype for kind in DEVICE_KINDS} if isinstance(dtype, str) else dtype
    if not isinstance(dtype, dict) or set(dtype) - set(DEVICE_KINDS):
        raise PipelineError(f"compute.dtype is {dtype!r}",
                            f"give one dtype name, or one per device kind: {{cuda: bfloat16, cpu: float32}}")
    dtype = {**default.dtype, **{k: str(v) for k, v in dtype.items()}}
    for kind, name in dtype.items():
        if name not in DTYPE_NAMES + ("auto",):
            raise PipelineError(f"compute.dtype.{kind} is {name!r}", f"use auto or one of {DTYPE_NAMES}")
    train_dtype = str(block.get("train_dtype", default.train_dtype))
    if train_dtype not in DTYPE_NAMES:
        raise PipelineError(f"compute.train_dtype is {train_dtype!r}", f"use one of {DTYPE_NAMES} (float32 is safest)")
    processes = block.get("processes", default.processes)
    if processes != "auto" and (not isinstance(processes, int) or isinstance(processes, bool) or processes < 1):
        raise PipelineError(f"compute.processes is {processes!r}",
                            "use a whole number >= 1 (1: no data parallelism) or auto (one per GPU)")
    reserve = block.get("gpu_reserve", default.gpu_reserve)
    if not isinstance(reserve, (int, float)) or not 0 <= reserve < 1:
        raise PipelineError(f"compute.gpu_reserve is {reserve!r}", "use a share in [0, 1), e.g. 0.2")
    if processes != 1 and re.match(r"^cuda:\d+$", device):
        raise PipelineError(f"compute.device {device} names one GPU, but compute.processes is {processes}",
                            "use device cuda or auto (process i then uses GPU i), or processes: 1")
    return ComputeSettings(device, dtype, train_dtype, processes, float(reserve))


# --- resolving on this machine ------------------------------------------------------------------
def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_count(s: ComputeSettings) -> int:
    """How many processes a data-parallel stage runs in: ``processes``, or with ``auto`` one per
    GPU the device setting lets it use (1 on the CPU)."""
    if s.processes != "auto":
        return int(s.processes)
    return 1 if s.device == "cpu" else max(1, cuda_count())


def resolve_device(name: str, local_rank: int = 0, n_cuda: int | None = None) -> str:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> the device this process uses ("cpu" or "cuda:I")."""
    n = cuda_count() if n_cuda is None else n_cuda
    if name == "cpu" or (name == "auto" and n == 0):
        return "cpu"
    if n == 0:
        raise PipelineError(f"compute.device is {name}, but this machine has no CUDA device "
                            "(torch.cuda.is_available() is False)",
                            "set compute.device: auto or cpu, or install a CUDA build of PyTorch on a GPU machine")
    index = int(name.split(":")[1]) if ":" in name else local_rank
    if index >= n:
        raise PipelineError(f"compute.device {name} needs GPU {index}, but this machine has {n} "
                            f"(process {local_rank})",
                            f"use a GPU index below {n}, or at most {n} processes (compute.processes)")
    return f"cuda:{index}"


def cpu_has_bf16() -> bool:
    """bf16 units (AVX512-BF16 or AMX): only there is bfloat16 faster than float32 on a CPU."""
    import torch

    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(p is not None and p() for p in probes)


def resolve_dtype(s: ComputeSettings, device: str) -> str:
    kind = "cuda" if device.startswith("cuda") else "cpu"
    name = s.dtype[kind]
    if name != "auto":
        return name
    if kind == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"


@dataclass(frozen=True)
class Placement:
    """Where this process computes: what stages ask for instead of deciding."""

    device: str  # "cpu" or "cuda:I"
    dtype: str  # models compute in it
    train_dtype: str  # trained weights and their optimiser state
    shard: "Shard"  # this process's part of the data-parallel work
    gpu_reserve: float = 0.2

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def torch_dtype(self) -> "torch.dtype":
        from pipeline.core.loading import torch_dtype

        return torch_dtype(self.dtype)

    @property
    def torch_train_dtype(self) -> "torch.dtype":
        from pipeline.core.loading import torch_dtype

        return torch_dtype(self.train_dtype)

    def load_kwargs(self, model_dir: str | Path, spread: bool = False) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments that put a model here (:func:`load_kwargs`)."""
        return load_kwargs(self, model_dir, spread)

    def describe(self) -> str:
        procs = f", process {self.shard.rank + 1} of {self.shard.world}" if self.shard.world > 1 else ""
        return f"{self.device}, {self.dtype}{procs}"


def log(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def place(params: dict[str, Any], stage: str, uses_device: bool = True, why_cpu: str = "") -> Placement:
    """This process's placement for ``stage``; fails before any model is loaded.

    ``uses_device=False``: the stage's work belongs on the CPU (``why_cpu`` says why); it says so
    in its log when the setting names a GPU, and computes with the CPU's dtype.
    """
    from pipeline.compute import parallel

    s = settings(params)
    device = resolve_device(s.device, parallel.local_rank())
    if not uses_device:
        if device != "cpu":
            log(stage, f"runs on the CPU ({why_cpu}); compute.device {s.device} is used by the model stages")
        device = "cpu"
    shard = parallel.join(device)
    placement = Placement(device, resolve_dtype(s, device), s.train_dtype, shard, s.gpu_reserve)
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)
    if shard.is_main:
        log(stage, f"compute: {placement.describe()}")
    return placement


def warn_slow_dtype(placement: Placement) -> None:
    """Half precision on a CPU without AVX-512 runs through emulated kernels: say so.

    Measured on a 2-core AVX2-only EPYC: a bf16 1024x896x4864 matmul took 18 s against
    0.22 s in float32, and a 0.5B forward of 8x128 tokens ~100 s against ~16 s.
    """
    import torch

    if placement.dtype in ("bfloat16", "float16") and placement.device == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        if not capability.startswith("AVX512"):
            print(f"warning: {placement.dtype} on a {capability} CPU is emulated and can be ~10-80x slower than "
                  "float32; consider compute.dtype.cpu: float32", file=sys.stderr)


# --- putting weights on devices ----------------------------------------------------------------
def checkpoint_bytes(model_dir: str | Path, dtype_bytes: int) -> int:
    """Bytes the weights take in a dtype of ``dtype_bytes``, from config.json alone (no weights read)."""
    from pipeline.compute.sizes import ModelShape

    return ModelShape.from_dir(model_dir).parameters * dtype_bytes


def gpu_budgets(placement: Placement, spread: bool) -> dict[int, int]:
    """Bytes of weights each GPU may take: free memory less the reserve for activations.

    One process spreading a model uses every GPU (``device: cuda``/``auto``); otherwise only its own.
    """
    import torch

    own = int(placement.device.split(":")[1])
    indices = range(torch.cuda.device_count()) if spread else [own]
    budgets = {}
    for i in indices:
        free, _total = torch.cuda.mem_get_info(i)
        budgets[i] = int(free * (1 - placement.gpu_reserve))
    return budgets


def device_map(model, budgets: dict[int, int], cpu_bytes: int) -> dict[str, Any]:
    """Accelerate's placement of ``model`` (built on the meta device) over GPUs with ``budgets``
    (bytes of weights each), then the CPU (offload, the last resort), whole decoder blocks at a
    time; what does not fit there goes to disk."""
    from accelerate import infer_auto_device_map

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    return infer_auto_device_map(model, max_memory={**budgets, "cpu": cpu_bytes}, no_split_module_classes=no_split)


def meta_model(model_dir: str | Path, dtype: str):
    """The model's modules with no weights (meta device): enough to plan where they go."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pipeline.core.loading import torch_dtype

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)), dtype=torch_dtype(dtype))
    model.tie_weights()
    return model


def load_kwargs(placement: Placement, model_dir: str | Path, spread: bool = False) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that put a model where this process computes.

    On the CPU: nothing (the weights stay where they are read). On a GPU: straight onto this
    process's GPU when the model fits it; with ``spread`` (the source of extraction, attribution
    and evaluation, in one process) a model larger than that GPU is laid out over all GPUs, then
    the CPU, by Accelerate's big-model loading.
    """
    if not placement.on_gpu:
        return {}
    from pipeline.core.loading import torch_dtype

    need = checkpoint_bytes(model_dir, torch_dtype(placement.dtype).itemsize)
    own = sum(gpu_budgets(placement, spread=False).values())
    if need <= own:
        return {"device_map": {"": placement.device}}
    if not spread or placement.shard.world > 1:
        raise PipelineError(
            f"{model_dir} needs {need / 2**30:.1f} GiB of weights in {placement.dtype}, more than "
            f"{placement.device} has free ({own / 2**30:.1f} GiB after compute.gpu_reserve)",
            "use a GPU with more memory, compute.processes: 1 (one process then spreads a source over "
            "every GPU), or a smaller compute.gpu_reserve; `python -m pipeline.compute.plan` shows the sizes")
    layout = device_map(meta_model(model_dir, placement.dtype), gpu_budgets(placement, spread=True), cpu_budget())
    return {"device_map": layout, "offload_folder": str(Path(os.environ.get("TMPDIR", "/tmp")) / "semalign-offload")}


def cpu_budget() -> int:
    """Host memory the weights may take when they do not fit the GPUs (half the machine's RAM)."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
