"""Task builders: each turns its source data into deterministic, disjoint splits.

A builder is ``build(cfg: dict, seed: int) -> TaskBuild``; ``cfg`` is the task's block of
``params.yaml`` (split sizes and options). Builders register in ``REGISTRY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.errors import PipelineError


@dataclass
class TaskBuild:
    splits: dict[str, list[dict[str, Any]]]  # split name -> records (see pipeline.data)
    card: dict[str, Any] = field(default_factory=dict)  # source, version, license, counts, notes


Builder = Callable[[dict, int], TaskBuild]
REGISTRY: dict[str, Builder] = {}


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
    from pipeline.tasks import toy, toy_copy  # noqa: F401  (each registers itself)
