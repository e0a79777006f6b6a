"""Stage `evaluate-*`: one model directory on one benchmark's evaluation split.

    python -m stages.evaluate MODEL_KEY BENCHMARK [--model DIR]

MODEL_KEY names the model in every output (default directory: ``models/MODEL_KEY``);
BENCHMARK is one of mmlu, gsm8k, humaneval, mbpp. Settings come from the ``evaluation``
block of params.yaml. Writes

* ``metrics/eval/MODEL_KEY/BENCHMARK.json``: ``{BENCHMARK: {MODEL_KEY: {metric, its 95%
  interval, correct count, n}}}``, nested so that ``dvc exp show`` columns read
  ``mmlu.source.acc`` instead of sixteen columns all called ``acc``;
* ``artifacts/eval/MODEL_KEY/BENCHMARK/samples.jsonl``: one line per question with the
  prompt, the output, the extracted answer and the verdict;
* ``artifacts/eval/MODEL_KEY/BENCHMARK/details.json``: settings, per-subject MMLU numbers,
  generation speed, the sandbox isolation in force and verdict counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.compute import launch
from pipeline.compute.placement import place, warn_slow_dtype
from pipeline.core.artifacts import atomic_path, write_json
from pipeline.core.data import read_jsonl, write_jsonl
from pipeline.core.errors import PipelineError
from pipeline.core.params import load_params, section
from pipeline.core.runner import guarded
from pipeline.evaluation.benchmarks import BENCHMARKS, Settings, check_records, evaluate, select, summary_line

CODE_BENCHMARKS = ("humaneval", "mbpp")  # their answers run in the sandbox


def run(args: argparse.Namespace) -> None:
    if args.benchmark not in BENCHMARKS:
        raise PipelineError(f"unknown benchmark {args.benchmark!r}", f"use one of {', '.join(BENCHMARKS)}")
    params = load_params(args.params)
    block = section(params, "evaluation")
    model_dir = Path(args.model or Path("models") / args.model_key)
    if not (model_dir / "config.json").is_file():
        raise PipelineError(f"model directory {model_dir} has no config.json",
                            f"build it first (`dvc repro`) or pass --model DIR for key {args.model_key!r}")
    placement = place(params, f"evaluate@{args.model_key}-{args.benchmark}")  # a bad value fails before any work
    settings = Settings.for_benchmark(block, args.benchmark)
    split = Path(args.tasks_dir) / args.benchmark / "evaluation.jsonl"
    records = read_jsonl(split)
    check_records(args.benchmark, records, str(split))
    records = select(records, settings.limit)
    sandbox = None
    if args.benchmark in CODE_BENCHMARKS:
        from pipeline.evaluation.sandbox import Sandbox

        sandbox = Sandbox.from_params(block.get("sandbox"))  # probes the isolation before any model is loaded
        print(sandbox.status_line(), file=sys.stderr)

    from pipeline.core.loading import load_model, load_tokenizer

    warn_slow_dtype(placement)
    if block.get("threads"):
        # On a shared or busy CPU, fewer intra-op threads can be much faster: idle OpenMP
        # workers spin while the OS schedules someone else's process on their core.
        import torch

        torch.set_num_threads(int(block["threads"]))
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir), placement=placement, spread=True)
    result = evaluate(args.benchmark, model, tokenizer, records, settings, sandbox, progress=not args.no_progress,
                      shard=placement.shard)
    if result is None:
        return  # the main process writes what every process computed

    out_dir = Path(args.artifacts_dir) / args.model_key / args.benchmark
    with atomic_path(out_dir, is_dir=True) as tmp:
        write_jsonl(tmp / "samples.jsonl", result.samples)
        write_json(tmp / "details.json", {"model_key": args.model_key, "model_dir": str(model_dir),
                                          "dtype": placement.dtype, "device": placement.device,
                                          "processes": placement.shard.world, "split": str(split),
                                          "metrics": result.metrics, **result.details})
    # Metrics last: their presence means the samples behind them are complete.
    write_json(Path(args.metrics_dir) / args.model_key / f"{args.benchmark}.json",
               {args.benchmark: {args.model_key: result.metrics}})
    print(summary_line(args.benchmark, args.model_key, result.metrics))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_key", help="name of the model in outputs (e.g. source, target, semalign-s1)")
    ap.add_argument("benchmark", help=f"one of {', '.join(BENCHMARKS)}")
    ap.add_argument("--model", help="model directory (default: models/MODEL_KEY)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tasks-dir", default="data/tasks")
    ap.add_argument("--metrics-dir", default="metrics/eval")
    ap.add_argument("--artifacts-dir", default="artifacts/eval")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    args = ap.parse_args(argv)
    return guarded(f"evaluate@{args.model_key}-{args.benchmark}", lambda: run(args))


if __name__ == "__main__":
    launch.data_parallel("stages.evaluate")
    sys.exit(main())
