"""What every baseline run gets (paths, shared settings, its own params block) and returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from pipeline.core import layout
from pipeline.core.cost import Cost
from pipeline.core.data import EncodedSplit, SUPERVISE_MODES, encode, read_jsonl
from pipeline.core.errors import PipelineError
from pipeline.core.loading import DTYPES, load_model, load_tokenizer
from pipeline.core.lora import LoraSettings
from pipeline.compute.parallel import SINGLE, Shard
from pipeline.baselines.training import TrainSettings

if TYPE_CHECKING:
    from pipeline.compute.placement import Placement

COMMON_KEYS = {"seeds", "enabled", "save_dtype", "lora"}


@dataclass(frozen=True)
class Paths:
    """Where a run reads from, relative to the project root (the DVC layout)."""

    target: Path
    source: Path
    task: Path  # data/tasks/<task>/ with attribution/transfer/validation.jsonl
    cache: Path  # artifacts/<task>/source/ with the cached source outputs per split

    @classmethod
    def for_task(cls, root: str | Path, task: str) -> "Paths":
        root = Path(root)
        return cls(target=root / layout.model_dir("target"), source=root / layout.model_dir("source"),
                   task=root / layout.task_dir(task), cache=root / layout.source_dir(task))


@dataclass(frozen=True)
class Common:
    """Settings shared by all baselines: ``baselines:`` top-level keys, plus max_length and
    supervise from the ``data:`` block, which the source extraction uses too (the cached
    source outputs are only valid for the same tokenisation)."""

    max_length: int = 384
    supervise: str = "answer"
    save_dtype: str = "auto"  # "auto": the target checkpoint's own dtype
    lora: LoraSettings = field(default_factory=LoraSettings)

    @classmethod
    def from_params(cls, block: dict[str, Any], data: dict[str, Any]) -> "Common":
        c = cls(max_length=int(data.get("max_length", cls.max_length)),
                supervise=str(data.get("supervise", cls.supervise)),
                save_dtype=str(block.get("save_dtype", cls.save_dtype)),
                lora=LoraSettings.from_params(block.get("lora")))
        if c.supervise not in SUPERVISE_MODES:
            raise PipelineError(f"unknown data.supervise {c.supervise!r}", f"use one of {SUPERVISE_MODES}")
        allowed = sorted(DTYPES) + ["auto"]
        if c.save_dtype not in allowed:
            raise PipelineError(f"unknown baselines.save_dtype {c.save_dtype!r}", f"use one of {allowed}")
        return c


@dataclass
class Context:
    method: str
    task: str
    seed: int
    paths: Paths
    common: Common
    block: dict[str, Any]  # the method's own params block
    cost: Cost = field(default_factory=Cost)
    placement: Placement | None = None  # where the run computes (pipeline.compute.placement); None: the CPU in float32
    step_log: Callable[[dict[str, float]], None] | None = None  # the stage's per-step log (main process only)

    @property
    def device(self) -> str:
        return self.placement.device if self.placement else "cpu"

    @property
    def train_dtype(self) -> torch.dtype:
        """The dtype of weights a method trains itself (projections, hypernetworks) and their optimiser state."""
        return self.placement.torch_train_dtype if self.placement else torch.float32

    @property
    def shard(self) -> Shard:
        return self.placement.shard if self.placement else SINGLE

    def log_step(self, step: int, entry: dict[str, float]) -> None:
        """The training loop's ``on_step``: one optimizer step's loss, its terms, gradient norm and lr."""
        if self.step_log is not None:
            self.step_log({k: v for k, v in entry.items() if k != "step"})

    def train_settings(self) -> TrainSettings:
        """The method's own ``train`` block (each method has one, so that tuning one method's
        optimiser never invalidates another's cached runs)."""
        return TrainSettings.from_params(self.block.get("train"), where=f"baselines.{self.method}.train")

    def split_file(self, split: str) -> Path:
        return self.paths.task / f"{split}.jsonl"

    def require(self, *paths: Path, fix: str) -> None:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise PipelineError(f"{self.method} needs {', '.join(missing)}, which is missing", fix)

    def require_models(self, source: bool = False) -> None:
        fix = "run the models stage first (`dvc repro` runs it)"
        self.require(self.paths.target / "config.json", fix=fix)
        if source:
            self.require(self.paths.source / "config.json", fix=fix)

    def require_deeper_source(self) -> None:
        """Methods that give each target block one source block need L_s >= L_t (config only)."""
        n_s, n_t = depth(self.paths.source), depth(self.paths.target)
        if n_t > n_s:
            raise PipelineError(f"{self.method} maps each of the target's {n_t} blocks to its own source block, "
                                f"but the source has only {n_s}",
                                "use a deeper source than target (check models/source and models/target)")

    def require_splits(self, *splits: str) -> None:
        self.require(*(self.split_file(s) for s in splits), fix="run the data stage for this task first")

    # --- loading -------------------------------------------------------------------------
    def tokenizer(self):
        return load_tokenizer(str(self.paths.target))

    def load_target(self) -> nn.Module:
        return self._load(self.paths.target)

    def load_source(self) -> nn.Module:
        return self._load(self.paths.source)

    def _load(self, path: Path) -> nn.Module:
        if self.placement is None:
            return load_model(str(path), "float32")
        return load_model(str(path), placement=self.placement)

    def encode(self, tokenizer, split: str, limit: int | None = None, supervise: str | None = None) -> EncodedSplit:
        """A split tokenised as the cached source outputs are, its tensors on the run's device."""
        records = read_jsonl(self.split_file(split))
        if limit:
            records = records[:limit]
        return encode(tokenizer, records, self.common.max_length, supervise or self.common.supervise).to(self.device)

    def save_dtype(self) -> torch.dtype:
        if self.common.save_dtype != "auto":
            return DTYPES[self.common.save_dtype]
        config = json.loads((self.paths.target / "config.json").read_text())
        name = config.get("dtype") or config.get("torch_dtype") or "float32"
        return DTYPES.get(str(name), torch.float32)


def depth(model_dir: Path) -> int:
    """Number of decoder blocks, read from config.json (no weights loaded)."""
    return int(json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"])


@dataclass
class Result:
    """A baseline's output: a plain transformers model (adapters merged) and its log."""

    model: nn.Module
    tokenizer: Any
    log: dict[str, Any]


def trim(batch: EncodedSplit, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows of a right-padded split, cut to their longest real length."""
    mask = batch.attention_mask[rows]
    width = int(mask.sum(1).max())
    return batch.input_ids[rows, :width], mask[:, :width], batch.supervised[rows, :width]
