"""The per-layer frontier chain in params.yaml, and the command that rewrites it.

DVC templating has no arithmetic, so "stage k depends on stage k-1" is data: one entry per
(task, target block), keyed ``<task>-L<k>``, naming its task, layer and the previous
stage's key (``<task>-L00`` is the embedding stage). ``python -m pipeline.chain`` rewrites
the block for the tasks in params.yaml and the target model's depth, keeping comments.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pipeline.errors import PipelineError

KEY = re.compile(r"^(?P<task>[A-Za-z0-9_]+)-L(?P<layer>\d+)$")


def key(task: str, layer: int, n_layers: int) -> str:
    return f"{task}-L{layer:02d}"


def build_chain(tasks: list[str], n_layers: int) -> dict[str, dict]:
    chain = {}
    for task in tasks:
        for k in range(1, n_layers + 1):
            chain[key(task, k, n_layers)] = {"task": task, "layer": k, "prev": key(task, k - 1, n_layers)}
    return chain


def parse_key(stage_key: str) -> tuple[str, int]:
    m = KEY.match(stage_key)
    if not m:
        raise PipelineError(f"{stage_key!r} is not a chain key like 'mmlu-L03'", "regenerate with `python -m pipeline.chain`")
    return m["task"], int(m["layer"])


def check_chain(chain: dict, tasks: list[str], n_layers: int | None = None) -> None:
    """Every task has blocks 1..L in order, each entry pointing at the previous one."""
    if not isinstance(chain, dict) or not chain:
        raise PipelineError("params.yaml has no chain", "run `python -m pipeline.chain`")
    fix = "run `python -m pipeline.chain` to rewrite the chain for this model pair and task list"
    by_task: dict[str, list[int]] = {}
    for k, entry in chain.items():
        task, layer = parse_key(k)
        if entry.get("task") != task or int(entry.get("layer", -1)) != layer:
            raise PipelineError(f"chain entry {k} says task={entry.get('task')}, layer={entry.get('layer')}", fix)
        if parse_key(str(entry.get("prev", ""))) != (task, layer - 1):
            raise PipelineError(f"chain entry {k} follows {entry.get('prev')!r}, expected {task}'s layer {layer - 1}",
                                fix)
        by_task.setdefault(task, []).append(layer)
    if sorted(by_task) != sorted(tasks):
        raise PipelineError(f"chain covers tasks {sorted(by_task)}, params.yaml lists {sorted(tasks)}", fix)
    for task, layers in by_task.items():
        want = list(range(1, (n_layers or max(layers)) + 1))
        if sorted(layers) != want:
            raise PipelineError(f"chain for {task} has layers {sorted(layers)}, the target has blocks 1..{len(want)}", fix)


def target_depth(target: str, models_dir: Path = Path("models/target")) -> int:
    """Depth of the target: from its materialised config, a local dir, or the offline registry."""
    for d in (models_dir, Path(target)):
        cfg = d / "config.json"
        if cfg.is_file():
            return int(json.loads(cfg.read_text())["num_hidden_layers"])
    try:
        from pipeline.materialize import known_depth  # offline specs know their depth
        depth = known_depth(target)
    except ImportError:
        depth = None
    if depth is None:
        raise PipelineError(f"cannot tell how many blocks target {target!r} has",
                            "pass --n-layers N, or run the models stage first (`dvc repro models`)")
    return depth


def rewrite(params_path: Path, n_layers: int | None = None) -> dict:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=2, offset=0)
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    params = yaml.load(params_path.read_text())
    tasks = list(params.get("tasks") or [])
    n = n_layers or target_depth(str(params["models"]["target"]))
    params["chain"] = build_chain(tasks, n)
    with params_path.open("w") as f:
        yaml.dump(params, f)
    return params["chain"]


def main() -> None:
    ap = argparse.ArgumentParser(description="Rewrite the frontier chain in params.yaml for its tasks and target.")
    ap.add_argument("--params", default="params.yaml", type=Path)
    ap.add_argument("--n-layers", type=int, help="target depth (default: read from the target model)")
    args = ap.parse_args()
    chain = rewrite(args.params, args.n_layers)
    print(f"chain: {len(chain)} frontier stages written to {args.params}")


if __name__ == "__main__":
    main()
