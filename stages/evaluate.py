"""Stage: evaluate one model directory on one benchmark's evaluation split.

    python stages/evaluate.py MODEL_KEY BENCHMARK [--model DIR]

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
from dataclasses import fields
from pathlib import Path

# Stage scripts run as `python stages/x.py`; make the library importable from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.artifacts import atomic_path, write_json  # noqa: E402
from pipeline.compute import launch  # noqa: E402
from pipeline.evaluation.benchmarks import BENCHMARKS, PRIMARY, Settings, check_records, evaluate, select  # noqa: E402
from pipeline.compute.placement import place  # noqa: E402
from pipeline.core.data import read_jsonl, write_jsonl  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.core.params import load_params, section  # noqa: E402
from pipeline.core.runner import guarded  # noqa: E402

SANDBOX_KEYS = ("isolation", "python", "workers")


def settings_for(block: dict, benchmark: str) -> Settings:
    per = (block.get("benchmarks") or {}).get(benchmark) or {}
    if "batch_size" not in per and "batch_size" in block:
        per = {**per, "batch_size": block["batch_size"]}
    workers = (block.get("sandbox") or {}).get("workers", 1)
    return Settings.from_params({**per, "sandbox_workers": workers}, per.get("batch_size", 8))


def make_sandbox(block: dict):
    from pipeline.evaluation.sandbox import Limits, Sandbox

    cfg = dict(block.get("sandbox") or {})
    limit_keys = {f.name for f in fields(Limits)}
    unknown = sorted(set(cfg) - limit_keys - set(SANDBOX_KEYS))
    if unknown:
        raise PipelineError(f"unknown evaluation.sandbox setting(s) {unknown}",
                            f"use only {sorted(limit_keys | set(SANDBOX_KEYS))}")
    limits = Limits(**{k: v for k, v in cfg.items() if k in limit_keys})
    return Sandbox(limits, isolation=cfg.get("isolation", "auto"), python=cfg.get("python"))


def sandbox_line(info: dict) -> str:
    """The stage's line on the code sandbox; a fallback from kernel isolation is a warning."""
    line = f"code sandbox: isolation={info['isolation']} guard={info['guard']} python={info['python']}"
    if info["fallback_note"]:
        line = (f"WARNING: {line}: no kernel isolation, only resource limits and the in-process guard stand "
                f"between generated code and this host ({info['fallback_note']}). To fail instead, set "
                "evaluation.sandbox.isolation: namespaces")
    return line


def warn_slow_dtype(dtype: str, device: str) -> None:
    """Half precision on a CPU without AVX-512 runs through emulated kernels.

    Measured on a 2-core AVX2-only EPYC: a bf16 1024x896x4864 matmul took 18 s against
    0.22 s in float32, and a 0.5B forward of 8x128 tokens ~100 s against ~16 s.
    """
    import torch

    if dtype in ("bfloat16", "float16") and device == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        if not capability.startswith("AVX512"):
            print(f"warning: {dtype} on a {capability} CPU is emulated and can be ~10-80x slower than float32; "
                  "consider compute.dtype.cpu: float32", file=sys.stderr)


def summary_line(benchmark: str, key: str, metrics: dict) -> str:
    m = PRIMARY[benchmark]
    return (f"{benchmark} {key}: {m} {metrics[m]:.2f}% "
            f"[{metrics[m + '_ci95_low']:.2f}, {metrics[m + '_ci95_high']:.2f}] n={metrics['n']}")


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
    settings = settings_for(block, args.benchmark)
    split = Path(args.tasks_dir) / args.benchmark / "evaluation.jsonl"
    records = read_jsonl(split)
    check_records(args.benchmark, records, str(split))
    records = select(records, settings.limit)
    sandbox = None
    if args.benchmark in ("humaneval", "mbpp"):
        sandbox = make_sandbox(block)  # probes the isolation before any model is loaded
        print(sandbox_line(sandbox.describe()), file=sys.stderr)

    from pipeline.core.loading import load_model, load_tokenizer

    warn_slow_dtype(placement.dtype, placement.device)
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
