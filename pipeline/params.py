"""Reading params.yaml (block style, no interpolation: `dvc exp run -S` rewrites it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError
from pipeline.frontier import FrontierConfig

PARAMS = Path("params.yaml")


def load_params(path: str | Path = PARAMS) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"{p} is missing", "run the stages from the project root, where params.yaml lives")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{p} is not valid YAML ({exc})", "fix the syntax (`git diff params.yaml` shows edits)")


def section(params: dict, name: str) -> dict[str, Any]:
    if not isinstance(params.get(name), dict):
        raise PipelineError(f"params.yaml has no {name!r} block", f"add the {name} block (see README, 'Parameters')")
    return params[name]


def check_task(params: dict, task: str) -> None:
    tasks = params.get("tasks") or []
    if task not in tasks:
        raise PipelineError(f"task {task!r} is not listed under tasks: in params.yaml ({tasks})",
                            "add it to tasks and run `python -m pipeline.chain` to extend the chain")


def frontier_config(params: dict) -> FrontierConfig:
    f = dict(section(params, "frontier"))
    lora = f.pop("lora", {}) or {}
    known = set(FrontierConfig.__dataclass_fields__)
    unknown = sorted(set(f) - known)
    if unknown:
        raise PipelineError(f"unknown frontier params {unknown}", f"use only {sorted(known)} (and lora:)")
    cfg = FrontierConfig(**f, lora_r=lora.get("r", 16), lora_alpha=lora.get("alpha", 16),
                         lora_dropout=lora.get("dropout", 0.05),
                         lora_targets=list(lora.get("targets", FrontierConfig().lora_targets)),
                         seed=int(params.get("seed", 0)))
    cfg.validate()
    return cfg
