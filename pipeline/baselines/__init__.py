"""Baselines SemAlign is compared with, each producing a Hugging Face model directory.

- ``sft``        LoRA fine-tuning on the transfer split (same data, no source)
- ``kd``         forward-KL logit distillation from the cached source top-K logits
- ``hidden_kd``  hidden-state distillation through learned projections, plus output KL
- ``seeking``    SEEKING (Zhong et al. 2024): sensitivity-located source sub-matrices as LoRA init
- ``laten``      LaTen (Tan et al. 2025): hypernetwork-translated source neurons, no fine-tuning

Every method module exposes ``prepare(ctx) -> settings`` (cheap: validates its params block
and checks that its inputs exist, before any model is loaded) and ``run(ctx, settings) ->
Result``. ``pipeline.baselines.runner`` ties them to the stage layout.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.core.errors import PipelineError

METHODS = ("sft", "kd", "hidden_kd", "seeking", "laten")
USES_SOURCE_MODEL = ("seeking", "laten")  # the others read cached source outputs only


def method_module(name: str) -> ModuleType:
    if name not in METHODS:
        raise PipelineError(f"unknown baseline method {name!r}", f"use one of {', '.join(METHODS)}")
    return importlib.import_module(f"pipeline.baselines.{name}")
