"""Stage `models@ROLE`: materialise the source or target as a plain HF directory."""

import sys

from pipeline import layout
from pipeline.materialize import materialize
from pipeline.params import load_params, section
from pipeline.runner import run_stage


def main() -> None:
    role = sys.argv[1]
    models = section(load_params(), "models")
    materialize(str(models[role]), layout.model_dir(role), str(models.get("dtype", "bfloat16")))


if __name__ == "__main__":
    run_stage(f"models@{sys.argv[1]}", main)
