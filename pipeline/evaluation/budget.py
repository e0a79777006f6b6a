"""Each method's training budget per task, stated from params.yaml and the split sizes.

The shared currency is the pass over the transfer split: every method trains on the task's
transfer examples, and none may see them fewer times than SemAlign does. A method's own
paper settings apply where its paper gives them (SEEKING's 32 seed examples, LaTen's
extract/align sizes and 16 sequences per step), capped by the splits that exist.

- SemAlign trains each target block alone for ``frontier.steps`` steps of
  ``frontier.batch_size`` examples (full batches, cycling through fresh shuffles; all N when
  N < batch), so each trained block sees ``steps * batch / N`` passes; a block without any objective
  (``FrontierConfig.trains``) trains 0 steps. Its examples seen and optimizer steps are
  summed over the trained blocks (each block has its own optimizer; one block's forward is
  about 1/L of the model's).
- A baseline trains all its parameters at once with ``pipeline.baselines.training.plan``: epochs of
  ceil(N / batch) steps, or exactly ``max_steps``; passes = examples seen / examples used.

The numbers are computed by the same functions that run (``training.plan``,
``FrontierConfig.trains``), not restated, so the table cannot drift from what ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.baselines import METHODS as BASELINES
from pipeline.core.errors import PipelineError
from pipeline.method.frontier import frontier_config
from pipeline.core.params import baseline_seeds, section, seeds

SPLITS = ("attribution", "transfer", "validation")


@dataclass(frozen=True)
class Budget:
    """One run of ``method`` on ``task`` (every seed gets the same budget)."""

    method: str
    task: str
    examples_used: int  # distinct training examples drawn from (the transfer split or LaTen's align part)
    examples_seen: int  # summed batch sizes over all optimizer steps (SemAlign: over its trained blocks)
    optimizer_steps: int  # SemAlign: summed over its trained blocks
    passes: float  # examples seen per example used (SemAlign: per trained block)
    batch_size: int
    extra: dict[str, int] = field(default_factory=dict)  # method-specific sizes (seed examples, ...)
    capped: tuple[str, ...] = ()  # paper settings a split was too small for
    seeds: tuple[int, ...] = ()  # the training seeds it runs with: one run each

    def row(self) -> dict[str, Any]:
        return {"method": self.method, "task": self.task, "seeds": list(self.seeds),
                "examples_used": self.examples_used,
                "passes": round(self.passes, 4), "examples_seen": self.examples_seen,
                "optimizer_steps": self.optimizer_steps, "batch_size": self.batch_size,
                "extra": dict(self.extra), "capped": list(self.capped)}


def split_sizes(params: dict, task: str) -> dict[str, int]:
    """The attribution / transfer / validation sizes of ``task`` (``tasks_config``)."""
    config = (params.get("tasks_config") or {}).get(task)
    if not isinstance(config, dict) or any(not isinstance(config.get(s), int) for s in SPLITS):
        raise PipelineError(f"tasks_config.{task} must give integer sizes for {list(SPLITS)}, got {config!r}",
                            f"set tasks_config.{task}.{{attribution,transfer,validation}} in params.yaml")
    sizes = {s: int(config[s]) for s in SPLITS}
    if sizes["transfer"] < 1:
        raise PipelineError(f"tasks_config.{task}.transfer is {sizes['transfer']}: no method has anything to train on",
                            "give the transfer split at least one example")
    return sizes


def semalign(params: dict, task: str, n_layers: int) -> Budget:
    n = split_sizes(params, task)["transfer"]
    cfg = frontier_config(params, seed=0)
    trained = sum(cfg.trains(k, n_layers) for k in range(1, n_layers + 1))
    # train_block tops a step up with one shuffle of the N examples: a step holds min(batch, N)
    per_block = cfg.steps * min(cfg.batch_size, n)
    return Budget("semalign", task, examples_used=n, examples_seen=trained * per_block,
                  optimizer_steps=trained * cfg.steps, passes=per_block / n if trained else 0.0,
                  batch_size=cfg.batch_size, extra={"trained_blocks": trained, "steps_per_block": cfg.steps})


def _block(params: dict, method: str) -> dict:
    return dict(section(params, "baselines").get(method) or {})


def _train(params: dict, method: str):
    from pipeline.baselines.training import TrainSettings

    return TrainSettings.from_params(_block(params, method).get("train"), where=f"baselines.{method}.train")


def _trained(method: str, task: str, n_used: int, settings, **kw) -> Budget:
    from pipeline.baselines.training import plan

    steps = plan(n_used, settings, seed=0)  # sizes do not depend on the seed
    seen = sum(len(s) for s in steps)
    return Budget(method, task, examples_used=n_used, examples_seen=seen, optimizer_steps=len(steps),
                  passes=seen / n_used, batch_size=settings.batch_size, **kw)


def _capped(name: str, wanted: int, split: str, size: int) -> tuple[str, ...]:
    return (f"{name} {size} < {wanted} (the {split} split)",) if size < wanted else ()


def baseline(params: dict, method: str, task: str) -> Budget:
    if method not in BASELINES:
        raise PipelineError(f"unknown baseline method {method!r}", f"use one of {', '.join(BASELINES)}")
    sizes = split_sizes(params, task)
    settings = _train(params, method)
    if method == "seeking":
        from pipeline.baselines.seeking import SEED_SPLIT, SeekingSettings

        wanted = int(_block(params, method).get("seed_examples", SeekingSettings.seed_examples))
        used = min(wanted, sizes[SEED_SPLIT])
        return _trained(method, task, sizes["transfer"], settings, extra={"seed_examples": used},
                        capped=_capped("seed_examples", wanted, SEED_SPLIT, used))
    if method == "laten":
        from pipeline.baselines.laten import ALIGN_SPLIT, EXTRACT_SPLIT, LatenSettings

        block = _block(params, method)
        want = {k: int(block.get(k, getattr(LatenSettings, k))) for k in ("extract_examples", "align_examples")}
        extract = min(want["extract_examples"], sizes[EXTRACT_SPLIT])
        align = min(want["align_examples"], sizes[ALIGN_SPLIT])
        capped = (_capped("extract_examples", want["extract_examples"], EXTRACT_SPLIT, extract)
                  + _capped("align_examples", want["align_examples"], ALIGN_SPLIT, align))
        return _trained(method, task, align, settings, extra={"extract_examples": extract}, capped=capped)
    return _trained(method, task, sizes["transfer"], settings)


def task_budgets(params: dict, task: str, n_layers: int, methods: tuple[str, ...] = BASELINES) -> list[Budget]:
    """SemAlign's budget on ``task``, then each of ``methods``'."""
    return [semalign(params, task, n_layers)] + [baseline(params, m, task) for m in methods]


def enabled(params: dict) -> dict[str, list[str]]:
    """Method -> the tasks it runs on: SemAlign on every task, a baseline on its enabled list."""
    tasks = list(params.get("tasks") or [])
    switched = section(params, "baselines").get("enabled") or {}
    return {"semalign": tasks, **{m: [t for t in (switched.get(m) or []) if t in tasks] for m in BASELINES}}


def method_seeds(params: dict) -> dict[str, list[int]]:
    """Method -> its training seeds: SemAlign's ``seeds``, every baseline's ``baselines.seeds``
    (dvc.yaml's matrices loop over the same two lists)."""
    return {"semalign": seeds(params), **{m: baseline_seeds(params) for m in BASELINES}}


def chain_depths(chain: dict) -> dict[str, int]:
    """Target depth per task: the deepest block of its frontier chain (chain.yaml)."""
    from pipeline.core.chain import parse_key

    depths: dict[str, int] = {}
    for key in chain:
        task, _, layer = parse_key(key)
        depths[task] = max(depths.get(task, 0), layer)
    return depths


def run_budgets(params: dict, n_layers: dict[str, int]) -> list[Budget]:
    """The budget of every (method, task) the pipeline runs; ``n_layers``: target depth per task
    (from the chain)."""
    missing = sorted(set(params.get("tasks") or []) - set(n_layers))
    if missing:
        raise PipelineError(f"the frontier chain has no blocks for the tasks {missing}",
                            "run `python -m pipeline.core.chain` to rewrite chain.yaml for params.yaml's tasks")
    runs, run_seeds = enabled(params), method_seeds(params)
    out = []
    for task in params.get("tasks") or []:  # task by task, SemAlign first: the order of the budget table
        out += [replace(semalign(params, task, n_layers[task]) if method == "semalign"
                        else baseline(params, method, task), seeds=tuple(run_seeds[method]))
                for method, tasks in runs.items() if task in tasks]
    return out


def shortfalls(budgets: list[Budget]) -> list[str]:
    """Every run that sees its training examples fewer times than each of SemAlign's blocks
    sees the transfer split on the same task."""
    reference = {b.task: b for b in budgets if b.method == "semalign"}
    problems = []
    for b in budgets:
        ref = reference.get(b.task)
        if b.method == "semalign" or ref is None:
            continue
        if b.passes < ref.passes - 1e-9:
            problems.append(f"{b.method} on {b.task}: {b.passes:.2f} passes over {b.examples_used} examples, "
                            f"SemAlign {ref.passes:.2f} per block")
    return problems
