"""The per-layer frontier chain (chain.yaml), and the command that rewrites it.

DVC templating has no arithmetic, so "stage k depends on stage k-1" is data: one entry per
(task, seed, target block), keyed ``<task>-s<seed>-L<k>``, naming its task, seed, layer and
the previous stage's key (``<task>-L00`` is the embedding stage, shared by the seeds).
dvc.yaml loads the file through ``vars`` rather than params.yaml: the chain is structure, not
a parameter (no ``dvc exp run -S`` sets it, and rewriting params.yaml never re-runs a stage
through it). DVC still lists the values each frontier stage interpolates from it as
``chain.*`` parameter columns of ``dvc exp show``; ``scripts/exp_show.sh`` drops them.
``python -m pipeline.core.chain`` rewrites it for the tasks and seeds in params.yaml and the
target model's depth.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Callable, NamedTuple

import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.params import seeds

KEY = re.compile(r"^(?P<task>[A-Za-z0-9_]+)(?:-s(?P<seed>\d+))?-L(?P<layer>\d+)$")


class ChainKey(NamedTuple):
    task: str
    seed: int | None  # None only for layer 0, the embedding, which no seed changes
    layer: int


def key(task: str, layer: int, seed: int | None = None) -> str:
    """``mmlu-s0-L03`` for block 3 of seed 0's chain; ``mmlu-L00`` for the shared embedding."""
    if layer == 0:
        return f"{task}-L00"
    if seed is None:
        raise PipelineError(f"chain block {layer} of {task} needs a seed", "pass the run's seed")
    return f"{task}-s{seed}-L{layer:02d}"


def stage_subdir(stage_key: str) -> str:
    """Output directory of a chain stage under artifacts/<task>/frontier/: ``s0/mmlu-s0-L03``
    for a block (one directory per seed), ``mmlu-L00`` for the shared embedding."""
    seed = parse_key(stage_key).seed
    return stage_key if seed is None else f"s{seed}/{stage_key}"


def block_number(value: int, n_layers: int) -> int:
    """A block number as params.yaml writes it: k >= 1 is block k, -n the n-th from the end
    (so a setting carries over to targets of another depth)."""
    return n_layers + value + 1 if value < 0 else value


def build_chain(tasks: list[str], n_layers: int, seeds: list[int]) -> dict[str, dict]:
    """One entry per (task, seed, block); every seed's chain starts from the task's embedding."""
    chain = {}
    for task in tasks:
        for seed in seeds:
            for k in range(1, n_layers + 1):
                this, prev = key(task, k, seed), key(task, k - 1, seed)
                chain[this] = {"task": task, "seed": seed, "layer": k, "prev": prev,
                               "dir": stage_subdir(this), "prev_dir": stage_subdir(prev)}
    return chain


def parse_key(stage_key: str) -> ChainKey:
    m = KEY.match(stage_key)
    if not m or (m["seed"] is None) != (int(m["layer"]) == 0):
        raise PipelineError(f"{stage_key!r} is not a chain key like 'mmlu-s0-L03' (or 'mmlu-L00')",
                            "regenerate with `python -m pipeline.core.chain`")
    return ChainKey(m["task"], None if m["seed"] is None else int(m["seed"]), int(m["layer"]))


def chain_keys(chain: dict, task: str, seed: int) -> list[str]:
    """Keys of one (task, seed) chain, shallow to deep."""
    keys = [k for k in chain if parse_key(k)[:2] == (task, seed)]
    return sorted(keys, key=lambda k: parse_key(k).layer)


def check_chain(chain: dict, tasks: list[str], seeds: list[int], n_layers: int | None = None) -> None:
    """Every (task, seed) has blocks 1..L in order, each entry pointing at the previous one."""
    if not isinstance(chain, dict) or not chain:
        raise PipelineError("chain.yaml has no chain", "run `python -m pipeline.core.chain`")
    fix = "run `python -m pipeline.core.chain` to rewrite the chain for this model pair, task list and seeds"
    runs: dict[tuple[str, int], list[int]] = {}
    for k, entry in chain.items():
        task, seed, layer = parse_key(k)
        if (entry.get("task"), entry.get("seed"), int(entry.get("layer", -1))) != (task, seed, layer):
            raise PipelineError(f"chain entry {k} says task={entry.get('task')}, seed={entry.get('seed')}, "
                                f"layer={entry.get('layer')}", fix)
        if entry.get("dir") != stage_subdir(k) or entry.get("prev_dir") != stage_subdir(str(entry.get("prev"))):
            raise PipelineError(f"chain entry {k} names directories {entry.get('dir')!r} / {entry.get('prev_dir')!r}", fix)
        prev = parse_key(str(entry.get("prev", "")))
        if (prev.task, prev.layer) != (task, layer - 1) or prev.seed not in (seed, None):
            raise PipelineError(f"chain entry {k} follows {entry.get('prev')!r}, expected {key(task, layer - 1, seed)!r}",
                                fix)
        runs.setdefault((task, seed), []).append(layer)
    if sorted({t for t, _ in runs}) != sorted(tasks):
        raise PipelineError(f"chain covers tasks {sorted({t for t, _ in runs})}, params.yaml lists {sorted(tasks)}", fix)
    if sorted({s for _, s in runs}) != sorted(seeds):
        raise PipelineError(f"chain covers seeds {sorted({s for _, s in runs})}, params.yaml lists seeds "
                            f"{sorted(seeds)}", fix)
    for (task, seed), layers in runs.items():
        want = list(range(1, (n_layers or max(layers)) + 1))
        if sorted(layers) != want:
            raise PipelineError(f"chain for {task} (seed {seed}) has layers {sorted(layers)}, "
                                f"the target has blocks 1..{len(want)}", fix)
    missing = {(t, s) for t in tasks for s in seeds} - set(runs)
    if missing:
        raise PipelineError(f"chain lacks the runs (task, seed) {sorted(missing)}", fix)


KnownDepth = Callable[[str], int | None]  # an offline spec's depth (pipeline.core.materialize.known_depth)


def target_depth(target: str, models_dir: Path = Path("models/target"), known: KnownDepth | None = None) -> int:
    """Depth of the target: from its materialised config, a local dir, or ``known`` (the
    offline registry, passed in by the commands: importing it here would make every stage,
    through layout, depend on pipeline/core/materialize.py)."""
    for d in (models_dir, Path(target)):
        cfg = d / "config.json"
        if cfg.is_file():
            return int(json.loads(cfg.read_text())["num_hidden_layers"])
    depth = known(target) if known else None
    if depth is None:
        raise PipelineError(f"cannot tell how many blocks target {target!r} has",
                            "pass --n-layers N, or run the models stage first (`dvc repro models`)")
    return depth


CHAIN = Path("chain.yaml")
HEADER = ("# Written by `python -m pipeline.core.chain` for the tasks and seeds in params.yaml and the target's depth.\n"
          "# One frontier stage per (task, seed, target block); `prev` is the stage it starts from.\n")


def load_chain(path: Path = CHAIN) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path} is missing", "run `python -m pipeline.core.chain`")
    return (yaml.safe_load(path.read_text()) or {}).get("chain") or {}


def rewrite(params_path: Path = Path("params.yaml"), n_layers: int | None = None,
            chain_path: Path = CHAIN, known: KnownDepth | None = None) -> dict:
    params = yaml.safe_load(params_path.read_text())
    n = n_layers or target_depth(str(params["models"]["target"]), known=known)
    entries = build_chain(list(params.get("tasks") or []), n, seeds(params))
    chain_path.write_text(HEADER + yaml.safe_dump({"chain": entries}, sort_keys=False))
    return entries


def main(known: KnownDepth | None = None) -> None:
    ap = argparse.ArgumentParser(description="Rewrite chain.yaml for the tasks and seeds in params.yaml and the target.")
    ap.add_argument("--params", default="params.yaml", type=Path)
    ap.add_argument("--chain", default=CHAIN, type=Path)
    ap.add_argument("--n-layers", type=int, help="target depth (default: read from the target model)")
    args = ap.parse_args()
    chain = rewrite(args.params, args.n_layers, args.chain, known)
    print(f"{len(chain)} frontier stages written to {args.chain}")


if __name__ == "__main__":
    try:  # the command alone reads the offline registry (torch is not needed for the rest)
        from pipeline.core.materialize import known_depth
    except ImportError:
        known_depth = None
    main(known_depth)
