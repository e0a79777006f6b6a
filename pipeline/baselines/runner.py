"""One baseline run in the stage layout: check, measure, run, write the model directory.

The output directory ``artifacts/<task>/baselines/<method>-s<seed>/`` holds the merged
Hugging Face model and tokenizer, ``cost.json`` (wall time, peak RSS, time per phase) and
``log.json`` (losses and the method's choices). It is written atomically: a failed run
leaves no directory that a later stage would accept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.core import layout
from pipeline.core.artifacts import atomic_path, write_json
from pipeline.baselines import METHODS, method_module
from pipeline.baselines.context import COMMON_KEYS, Common, Context, Paths
from pipeline.compute.placement import settings as compute_settings
from pipeline.core.cost import measure
from pipeline.core.errors import PipelineError
from pipeline.core.params import check_baseline_seed, check_task, section


def output_dir(root: str | Path, task: str, method: str, seed: int) -> Path:
    return Path(root) / layout.baseline_dir(task, method, seed)


def live_dir(root: str | Path, task: str, method: str, seed: int) -> Path:
    return Path(root) / layout.baseline_live_dir(task, method, seed)


def make_context(params: dict[str, Any], method: str, task: str, seed: int, root: str | Path = ".") -> Context:
    """Validate the request against params.yaml: method known and switched on for the task, seed listed."""
    method_module(method)
    compute_settings(params)  # an old baselines.compute_dtype fails naming compute.dtype
    check_task(params, task)
    block = section(params, "baselines")
    unknown = set(block) - COMMON_KEYS - set(METHODS)
    if unknown:
        raise PipelineError(f"unknown keys {sorted(unknown)} in baselines",
                            f"use {sorted(COMMON_KEYS)} and the method blocks {list(METHODS)}")
    enabled = block.get("enabled") or {}
    if not isinstance(enabled, dict) or set(enabled) - set(METHODS):
        raise PipelineError(f"baselines.enabled must map methods to task lists, got {enabled!r}",
                            f"write e.g. enabled: {{sft: [{task}], kd: []}} with methods from {list(METHODS)}")
    tasks = list(enabled.get(method) or [])
    if task not in tasks:
        raise PipelineError(
            f"baseline {method!r} is switched off for task {task!r} (baselines.enabled.{method} = {tasks})",
            f"add {task!r} to baselines.enabled.{method} in params.yaml (an empty list switches the method off)")
    own = block.get(method) or {}
    check_baseline_seed(params, seed)
    return Context(method=method, task=task, seed=seed, paths=Paths.for_task(root, task),
                   common=Common.from_params(block, params.get("data") or {}), block=dict(own))


def run(ctx: Context, out: str | Path, live: str | Path | None = None) -> dict[str, Any] | None:
    """Run the method and write its output directory; returns the cost record (None on the
    processes other than the main one of a data-parallel run: it alone writes). With ``live``
    every optimizer step is logged there through DVCLive as it happens."""
    module = method_module(ctx.method)
    settings = module.prepare(ctx)  # fails here, before any model is loaded
    torch.manual_seed(ctx.seed)
    if not ctx.shard.is_main:
        module.run(ctx, settings)
        return None
    log = None
    if live is not None:
        from pipeline.core.training_log import TrainingLog

        log = TrainingLog(Path(live))
        ctx.step_log = log.step
    with atomic_path(out, is_dir=True) as tmp:
        with measure() as cost:
            ctx.cost = cost
            result = module.run(ctx, settings)
            with cost.phase("save"):
                result.model.to(ctx.save_dtype()).save_pretrained(tmp)
                result.tokenizer.save_pretrained(tmp)
        record = {"method": ctx.method, "task": ctx.task, "seed": ctx.seed, **cost.record(),
                  "torch_threads": torch.get_num_threads()}
        write_json(Path(tmp) / "cost.json", record)
        write_json(Path(tmp) / "log.json", {"method": ctx.method, "task": ctx.task, "seed": ctx.seed, **result.log})
    if log is not None:
        log.close({})
    return record
