"""Task builders: each turns its source data into deterministic, disjoint splits.

A builder is ``build(cfg: dict, seed: int) -> TaskBuild``; ``cfg`` is the task's block of
``params.yaml`` (split sizes and options). Builders register in ``REGISTRY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.core.errors import PipelineError


@dataclass
class TaskBuild:
    splits: dict[str, list[dict[str, Any]]]  # split name -> records (see pipeline.core.data)
    card: dict[str, Any] = field(default_factory=dict)  # source, version, license, counts, notes


Builder = Callable[[dict, int], TaskBuild]
REGISTRY: dict[str, Builder] = {}


def chat_record(rid: str, task: str, prompt: str, answer: str, meta: dict[str, Any]) -> dict[str, Any]:
    """One zero-shot record in the format of :mod:`pipeline.core.data`."""
    return {"id": rid, "task": task,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "meta": meta}


def counts(splits: dict[str, list]) -> dict[str, int]:
    return {split: len(records) for split, records in splits.items()}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        REGISTRY[name] = fn
        return fn

    return deco


def builder(name: str) -> Builder:
    _load_builtin()
    if name not in REGISTRY:
        raise PipelineError(f"unknown task {name!r}", f"use one of {sorted(REGISTRY)} or register a builder")
    return REGISTRY[name]


def _load_builtin() -> None:
    # Each module registers itself on import; importing them reads no data.
    from pipeline.tasks import gsm8k, humaneval, mbpp, mmlu, toy, toy_copy  # noqa: F401
