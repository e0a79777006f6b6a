"""Stage `heldout-*@…`: one model's held-out agreement with the source on a task's validation split.

    python -m stages.heldout MODEL_KEY TASK [--model DIR]

MODEL_KEY names the model in the outputs (``target``, ``semalign-s0``, ``sft-s1``, ...; default
directory ``models/MODEL_KEY``). Per validation example: summed KL(source || model) over its
supervised positions, top-1 hits and the position count, from the source's cached top-K
outputs (the extract stage). The untouched target is scored once per task; the report pairs
every other model with it on the same examples (``pipeline.evaluation.heldout.difference``). Writes

* ``artifacts/heldout/MODEL_KEY/TASK.json``: the per-example values and the example ids;
* ``metrics/heldout/MODEL_KEY/TASK.json``: ``{TASK: {MODEL_KEY: {kl, top1, examples, positions}}}``.

Data parallel over ``compute.processes``: each process scores its share of the batches, the main
process writes both files.
"""

import argparse
import sys
from pathlib import Path

from pipeline.compute import launch
from pipeline.core import layout
from pipeline.core.artifacts import load_metadata, load_tensors, write_json
from pipeline.core.data import encoded_from_tensors
from pipeline.core.errors import PipelineError
from pipeline.core.params import check_task, load_params, section
from pipeline.core.runner import run_stage


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m stages.heldout", description=__doc__.splitlines()[0])
    ap.add_argument("model_key", help="name of the model in outputs (target, semalign-s0, sft-s1, ...)")
    ap.add_argument("task")
    ap.add_argument("--model", help="model directory (default: models/MODEL_KEY)")
    return ap.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    params = load_params()
    check_task(params, args.task)
    batch = int(section(params, "quality")["batch_size"])
    model_dir = Path(args.model or layout.model_dir(args.model_key))
    if not (model_dir / "config.json").is_file():
        raise PipelineError(f"model directory {model_dir} has no config.json",
                            f"build it first (`dvc repro`) or pass --model DIR for key {args.model_key!r}")
    val = layout.source_dir(args.task) / "validation"
    tokens_file = val / "tokens.safetensors"
    tokens = load_tensors(tokens_file, "the extract stage")
    enc = encoded_from_tensors(load_metadata(tokens_file)["ids"], tokens)
    src = load_tensors(val / "output_topk.safetensors", "the extract stage")

    from pipeline.core.adapter import ModelAdapter
    from pipeline.compute.placement import place
    from pipeline.evaluation.heldout import score
    from pipeline.core.loading import load_model

    placement = place(params, f"heldout@{args.model_key}-{args.task}")
    adapter = ModelAdapter(load_model(str(model_dir), placement=placement))
    result = score(adapter, enc, src["topk_ids"], src["topk_logits"], batch, shard=placement.shard)
    if result is None:
        return  # the main process writes what every process scored
    write_json(layout.heldout_examples(args.model_key, args.task),
               {"model_key": args.model_key, "task": args.task, "ids": list(enc.ids), **result.to_json()})
    summary = {"kl": round(result.mean_kl, 6), "top1": round(result.mean_top1, 6),
               "examples": int((result.positions > 0).sum()), "positions": int(result.positions.sum())}
    write_json(layout.heldout_metrics(args.model_key, args.task), {args.task: {args.model_key: summary}})
    print(f"{args.model_key} on {args.task}: held-out KL {summary['kl']:.4f}, top-1 {summary['top1']:.3f} "
          f"({summary['examples']} examples, {summary['positions']} positions)")


if __name__ == "__main__":
    launch.data_parallel("stages.heldout")
    ARGS = parse(sys.argv[1:])
    run_stage(f"heldout@{ARGS.model_key}-{ARGS.task}", lambda: main(ARGS))
