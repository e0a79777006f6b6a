"""Stage `baseline-METHOD@TASK-SEED`: one baseline run, written as a Hugging Face model directory.

    python -m stages.baseline METHOD TASK --seed S

Reads the ``baselines`` and ``data`` blocks of params.yaml, ``models/target`` (and
``models/source`` for seeking / laten), ``data/tasks/TASK/*.jsonl`` and the cached source
outputs in ``artifacts/TASK/source/``; writes ``artifacts/TASK/baselines/METHOD-sS/``
(model, tokenizer, cost.json, log.json) and logs every training step through DVCLive into
``dvclive/TASK/baselines/METHOD-sS/``.
"""

import argparse
import sys

from pipeline.compute import launch
from pipeline.baselines import METHODS
from pipeline.compute.placement import place
from pipeline.core.params import load_params
from pipeline.core.runner import CostTag, run_stage


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.baseline", description=__doc__.splitlines()[0])
    ap.add_argument("method", help=f"one of {', '.join(METHODS)}")
    ap.add_argument("task")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    from pipeline.baselines import runner

    params = load_params()
    ctx = runner.make_context(params, args.method, args.task, args.seed)
    name = f"baseline-{args.method}@{args.task}-s{args.seed}"
    ctx.placement = place(params, name)
    out = runner.output_dir(".", args.task, args.method, args.seed)
    cost = runner.run(ctx, out, runner.live_dir(".", args.task, args.method, args.seed))
    if cost is not None:
        print(f"{out}: {cost['wall_s']:.1f} s, peak RSS {cost['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    ARGS = parse(sys.argv[1:])
    launch.data_parallel("stages.baseline")
    run_stage(f"baseline-{ARGS.method}@{ARGS.task}-s{ARGS.seed}", lambda: main(ARGS),
              CostTag(ARGS.method, ARGS.task, ARGS.seed))
