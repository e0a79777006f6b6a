"""Reading the source outputs the extraction stage caches, so distillation never loads the source.

Layout of one split directory (``artifacts/<task>/source/<split>/``)::

    tokens.safetensors       input_ids (N, T) int64, attention_mask (N, T) int64,
                             supervised (N, T) uint8        (right-padded)
    output_topk.safetensors  topk_ids (P, K) int64, topk_logits (P, K) float32
    layer_XX.safetensors     hidden (P, D_s) bfloat16: residual stream after source block XX

P rows are the supervised positions in (example, position) row-major order, the same order
as ``tensor[supervised]``. This reader is deliberately small and self-contained so that it
can be swapped for the extraction stage's own reader without touching the methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core import layout
from pipeline.core.artifacts import load_metadata, load_tensors
from pipeline.core.data import EncodedSplit
from pipeline.core.errors import PipelineError

PRODUCER = "the extract stage"


def layer_file(layer: int) -> str:
    return layout.layer_file(Path("."), layer).name


@dataclass
class CachedSplit:
    """A checked handle on one cached split; tensors are read on demand."""

    root: Path
    tokens: EncodedSplit

    @property
    def n_positions(self) -> int:
        return self.tokens.n_supervised

    def topk(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_ids (P, K) long, topk_logits (P, K) float32)."""
        t = load_tensors(self.root / "output_topk.safetensors", PRODUCER)
        ids, logits = t["topk_ids"].long(), t["topk_logits"].float()
        self._check_rows("output_topk.safetensors", ids.shape[0])
        return ids, logits

    def hidden(self, layer: int) -> torch.Tensor:
        """(P, D_s) residual stream after source block ``layer`` (1-based), as stored."""
        h = load_tensors(self.root / layer_file(layer), PRODUCER)["hidden"]
        self._check_rows(layer_file(layer), h.shape[0])
        return h

    def _check_rows(self, name: str, rows: int) -> None:
        if rows != self.n_positions:
            raise PipelineError(
                f"{self.root / name} has {rows} rows but tokens.safetensors marks {self.n_positions} "
                "supervised positions",
                f"the cache is inconsistent: delete {self.root} and re-run {PRODUCER}",
            )


def open_split(root: str | Path, needs_topk: bool = True, layers: tuple[int, ...] = ()) -> CachedSplit:
    """Check that every file a method needs is there (before any heavy work) and read the tokens."""
    root = Path(root)
    wanted = ["tokens.safetensors"] + (["output_topk.safetensors"] if needs_topk else [])
    wanted += [layer_file(k) for k in layers]
    missing = [name for name in wanted if not (root / name).is_file()]
    if missing:
        raise PipelineError(
            f"cached source outputs are missing in {root}: {', '.join(missing)}",
            f"run {PRODUCER} for this task and split first (`dvc repro` runs it)"
            + ("; it must save the hidden states of the paired source layers" if layers else ""),
        )
    t = load_tensors(root / "tokens.safetensors", PRODUCER)
    ids = load_metadata(root / "tokens.safetensors").get("ids", [])
    tokens = EncodedSplit(ids=list(ids), input_ids=t["input_ids"].long(), attention_mask=t["attention_mask"].long(),
                          supervised=t["supervised"].bool())
    return CachedSplit(root, tokens)


def check_same_encoding(cached: CachedSplit, encoded: EncodedSplit) -> None:
    """The cache must hold exactly the target-side encoding of the split's records."""
    a, b = cached.tokens, encoded.to("cpu")
    same = (a.input_ids.shape == b.input_ids.shape and torch.equal(a.input_ids, b.input_ids)
            and torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.supervised, b.supervised))
    if not same:
        raise PipelineError(
            f"the cached source tokens in {cached.root} do not match the target-side encoding of the "
            f"split (shapes {tuple(a.input_ids.shape)} vs {tuple(b.input_ids.shape)})",
            "the cache is stale or was made with another data.max_length / data.supervise / tokenizer: "
            f"re-run {PRODUCER} (`dvc repro` does)",
        )
