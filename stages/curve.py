"""Stage `curve@TASK-SEED`: held-out KL to the source and top-1 agreement after each frontier
stage k (blocks 1..k transferred, the rest original), on the validation split, with paired
95 % intervals of the change against the untouched target. Shows where a chain helps or
hurts. Writes metrics/curve/TASK-sSEED.json, plots/curve/TASK-sSEED.json, plots/curve_png/TASK-sSEED.png
and the per-example values behind them in artifacts/TASK/curve-sSEED.json."""

import sys

from pipeline.compute import launch
from pipeline.core import chain, layout
from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import load_metadata, load_tensors, write_json
from pipeline.compute.placement import place
from pipeline.method.curve import curve_points, heldout_curve, save_plot, summarise
from pipeline.core.data import encoded_from_tensors
from pipeline.core.loading import load_model
from pipeline.core.params import check_diagnostics_task, check_seed, check_task, load_params, section, task_and_seed
from pipeline.core.runner import run_stage


def main() -> None:
    task, seed = task_and_seed(sys.argv[1:])
    params = load_params()
    check_task(params, task)
    check_diagnostics_task(params, task)
    check_seed(params, seed)
    cfg = section(params, "curve")
    run = layout.run_name(task, seed)
    val = layout.source_dir(task) / "validation"
    tokens_file = val / "tokens.safetensors"
    tokens = load_tensors(tokens_file, "the extract stage")
    enc = encoded_from_tensors(load_metadata(tokens_file)["ids"], tokens)
    src = load_tensors(val / "output_topk.safetensors", "the extract stage")
    placement = place(params, f"curve@{run}")
    target = ModelAdapter(load_model(str(layout.model_dir("target")), placement=placement))
    chain.check_chain(chain.load_chain(), list(params["tasks"]), list(params["seeds"]), target.n_layers)

    def trained_block(k: int):
        key = chain.key(task, k, seed)
        return load_tensors(layout.frontier_dir(task, key) / "block.safetensors", f"frontier@{key}")

    points = heldout_curve(target, enc, trained_block, src["topk_ids"], src["topk_logits"],
                           curve_points(target.n_layers, int(cfg["every"])), int(cfg["batch_size"]))
    rows = summarise(points)
    write_json(layout.curve_metrics(run), {"examples": len(enc.ids), "positions": enc.n_supervised,
                                           "untouched": {"kl": rows[0]["kl"], "top1": rows[0]["top1"]},
                                           "transferred": rows[-1]})
    write_json(layout.curve_examples(run, task), {str(k): a.to_json() for k, a in points.items()})
    write_json(layout.curve_plot(run), rows)
    save_plot(layout.curve_png(run), rows, f"{run}: held-out agreement along the chain "
                                           f"({len(enc.ids)} examples, {enc.n_supervised} positions)")
    last = rows[-1]
    print(f"{run}: KL {rows[0]['kl']:.4f} -> {last['kl']:.4f} (change {last['kl_diff']:+.4f}, 95% "
          f"[{last['kl_diff_low']:+.4f}, {last['kl_diff_high']:+.4f}]), top-1 {rows[0]['top1']:.3f} -> {last['top1']:.3f}")


if __name__ == "__main__":
    launch.one_process("stages.curve")
    run_stage(f"curve@{layout.run_name(*task_and_seed(sys.argv[1:]))}", main)
