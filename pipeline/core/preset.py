"""Apply a preset (a partial params.yaml) to params.yaml, then rewrite the chain.

    python -m pipeline.core.preset presets/paper-llama2.yaml

Nested blocks are merged key by key; everything the preset does not name stays as it was.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core import chain


def merge(base, update) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def apply(preset: Path, params_path: Path, n_layers: int | None) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=2, offset=0)
    params = yaml.load(params_path.read_text())
    merge(params, yaml.load(preset.read_text()))
    with params_path.open("w") as f:
        yaml.dump(params, f)
    from pipeline.core.materialize import known_depth  # offline specs know their depth before materialising

    chain.rewrite(params_path, n_layers, params_path.parent / "chain.yaml", known_depth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", type=Path)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--n-layers", type=int, help="target depth, if the target is not materialised yet")
    args = ap.parse_args()
    apply(args.preset, args.params, args.n_layers)
    print(f"applied {args.preset} to {args.params}")


if __name__ == "__main__":
    main()
