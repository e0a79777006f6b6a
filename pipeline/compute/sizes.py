"""How big a model is, from its config alone: the model is built on the meta device (no weights
read, no memory taken), so the counts are exact for any family the adapter knows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    layers: int
    width: int
    vocab: int  # LM-head rows
    intermediate: int  # feed-forward width
    parameters: int  # all of them, a tied embedding counted once
    tensors: int  # tensors in the checkpoint (its state dict, a tied embedding once)
    block_parameters: int  # one decoder block
    block_tensors: int  # tensors in one block's state dict (a trained block's file holds them)
    head_parameters: int  # embedding + final norm + LM head (what a frontier stage loads besides its block)

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        import torch
        from transformers import AutoModelForCausalLM

        from pipeline.core.adapter import ModelAdapter

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        adapter = ModelAdapter(model)
        total = sum(p.numel() for p in model.parameters())
        block = sum(p.numel() for p in adapter.block(1).parameters())
        return cls(layers=adapter.n_layers, width=adapter.width, vocab=adapter.vocab_size,
                   intermediate=int(getattr(config, "intermediate_size", 4 * adapter.width)),
                   parameters=total, tensors=len({id(p) for p in model.parameters()}),
                   block_parameters=block, block_tensors=len(adapter.block(1).state_dict()),
                   head_parameters=total - adapter.n_layers * block)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelShape":
        from transformers import AutoConfig

        return cls.from_config(AutoConfig.from_pretrained(str(model_dir)))
