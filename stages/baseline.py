"""Stage: one baseline run, METHOD x TASK x seed.

    python stages/baseline.py METHOD TASK --seed S

Reads the ``baselines`` block of params.yaml, ``models/target`` (and ``models/source`` for
seeking / laten), ``data/tasks/TASK/*.jsonl`` and the cached source outputs in
``artifacts/TASK/source/``; writes ``artifacts/TASK/baselines/METHOD-sS/`` (a Hugging Face
model directory plus cost.json and log.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: the repo root holds `pipeline`

from pipeline.baselines import METHODS  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402


def read_params(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise PipelineError(f"{path} is missing", "run the stage from the project root, or pass --params")
    return yaml.safe_load(path.read_text()) or {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", help=f"one of {', '.join(METHODS)}")
    ap.add_argument("task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=".", help="project root (models/, data/, artifacts/ live here)")
    ap.add_argument("--params", default=None, help="params file (default: ROOT/params.yaml)")
    args = ap.parse_args(argv)
    try:
        from pipeline.baselines import runner

        root = Path(args.root)
        params = read_params(Path(args.params) if args.params else root / "params.yaml")
        ctx = runner.make_context(params, args.method, args.task, args.seed, root)
        out = runner.output_dir(root, args.task, args.method, args.seed)
        cost = runner.run(ctx, out)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} in {cost['wall_s']:.1f} s, peak RSS {cost['peak_rss_gib']:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
