"""Reading params.yaml (block style, no interpolation: `dvc exp run -S` rewrites it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import PipelineError

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
                            "add it to tasks and run `python -m pipeline.core.chain` to extend the chain")


def diagnostic_tasks(params: dict) -> list[str]:
    """Tasks whose diagnostics run (params.yaml ``diagnostics``): the per-layer agreement, the
    held-out curve after each frontier stage and the analysis figures. Each must be one of ``tasks``."""
    listed, tasks = params.get("diagnostics", []), params.get("tasks") or []
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        raise PipelineError(f"diagnostics must be a list of task names, got {listed!r}",
                            f"write e.g. `diagnostics: [{(tasks or ['gsm8k'])[0]}]`, or `diagnostics: []` for none")
    unknown = [t for t in listed if t not in tasks]
    if unknown:
        raise PipelineError(f"diagnostics lists {unknown}, which tasks: does not ({tasks})",
                            "list only tasks the run transfers, or add them to tasks")
    return listed


def check_diagnostics_task(params: dict, task: str) -> None:
    if task not in diagnostic_tasks(params):
        raise PipelineError(f"diagnostics are switched off for task {task!r} (diagnostics = {params.get('diagnostics', [])})",
                            f"add {task!r} to diagnostics in params.yaml")


def _seed_list(values, key: str, example: str) -> list[int]:
    if not isinstance(values, list) or not values or not all(isinstance(v, int) and v >= 0 for v in values) \
            or len(set(values)) != len(values):
        raise PipelineError(f"{key} must be a non-empty list of distinct integers >= 0, got {values!r}",
                            f"write e.g. {example} in params.yaml")
    return values


def seeds(params: dict) -> list[int]:
    """SemAlign's training seeds (params.yaml ``seeds``): one frontier chain per seed."""
    return _seed_list(params.get("seeds", [0]), "seeds", "`seeds: [0, 1, 2]`")


def baseline_seeds(params: dict) -> list[int]:
    """The baselines' training seeds (``baselines.seeds``): each enabled baseline runs once per seed."""
    block = params.get("baselines") or {}
    return _seed_list(block.get("seeds"), "baselines.seeds", "`seeds: [0]` under baselines")


def check_seed(params: dict, seed: int) -> None:
    listed = seeds(params)
    if seed not in listed:
        raise PipelineError(f"seed {seed} is not in params.yaml's seeds {listed}",
                            "add it to seeds and run `python -m pipeline.core.chain` to extend the chain")


def check_baseline_seed(params: dict, seed: int) -> None:
    listed = baseline_seeds(params)
    if seed not in listed:
        raise PipelineError(f"seed {seed} is not in params.yaml's baselines.seeds {listed}",
                            "add it to baselines.seeds (the baselines' training seeds)")


def task_and_seed(argv: list[str]) -> tuple[str, int]:
    """``TASK --seed N`` from a stage's command line (the seed defaults to 0)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("task")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    return args.task, args.seed


def fisher_tau(params: dict) -> float:
    """The temperature tau of p~ = softmax(z~ / tau) (fisher stage) and of d = (z - z~) / tau
    (frontier stages): one setting, ``fisher.tau``, since the surrogate approximates
    KL(p~ || softmax(z / tau)) only when both use the same tau."""
    tau = section(params, "fisher").get("tau", 1.0)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise PipelineError(f"fisher.tau must be a number > 0, got {tau!r}",
                            "set fisher.tau in params.yaml (1.0: no tempering)")
    return float(tau)


def storage_dtype(params: dict) -> str:
    """Precision of stored weights (materialised models, trained blocks, exported models)."""
    return str(section(params, "models").get("dtype", "bfloat16"))
