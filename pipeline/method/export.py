"""Assembling trained blocks into a Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import atomic_path
from pipeline.core.errors import PipelineError


def install_block(adapter: ModelAdapter, k: int, state: dict[str, torch.Tensor]) -> None:
    """Load a trained block's tensors into block k, refusing partial or mismatched states."""
    block = adapter.block(k)
    expected = block.state_dict()
    missing, extra = set(expected) - set(state), set(state) - set(expected)
    if missing or extra:
        raise PipelineError(f"block file for layer {k} does not fit the target (missing {sorted(missing)[:3]}, "
                            f"unexpected {sorted(extra)[:3]})",
                            "the frontier stage ran for another target model: re-run the chain")
    for name, t in state.items():
        if t.shape != expected[name].shape:
            raise PipelineError(f"block {k} tensor {name} has shape {tuple(t.shape)}, "
                                f"target expects {tuple(expected[name].shape)}", "re-run the frontier chain")
    block.load_state_dict({n: t.to(expected[n].dtype) for n, t in state.items()})


def export_model(adapter: ModelAdapter, tokenizer, blocks: dict[int, dict[str, torch.Tensor]],
                 out_dir: str | Path, require_all: bool = True, dtype: torch.dtype | None = None) -> None:
    """Write target + trained blocks as a plain HF directory (atomically), in ``dtype``."""
    if require_all and sorted(blocks) != list(range(1, adapter.n_layers + 1)):
        missing = sorted(set(range(1, adapter.n_layers + 1)) - set(blocks))
        raise PipelineError(f"trained blocks are missing for target layers {missing}",
                            "run every frontier stage of this task's chain (`dvc repro`)")
    for k, state in sorted(blocks.items()):
        install_block(adapter, k, state)
    if dtype is not None:
        adapter.model.to(dtype)
    with atomic_path(out_dir, is_dir=True) as tmp:
        adapter.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
