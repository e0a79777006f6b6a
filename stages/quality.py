"""Stage `quality@TASK-SEED`: does the transferred target behave more like the source than the
untouched target does? KL(source || target), top-1 agreement and per-layer aligned-logit
agreement on the held-out validation split."""

import sys

import torch

from pipeline import launch, layout
from pipeline.adapter import ModelAdapter
from pipeline.artifacts import load_metadata, load_tensors, read_json, write_json
from pipeline.compute import place
from pipeline.data import encoded_from_tensors
from pipeline.loading import load_model
from pipeline.params import check_seed, check_task, load_params, section, task_and_seed
from pipeline.quality import agreement, position_rows
from pipeline.runner import run_stage
from pipeline.supervision import aligned_logits_chunks, aligned_state, source_loader


def main() -> None:
    task, seed = task_and_seed(sys.argv[1:])
    params = load_params()
    check_task(params, task)
    check_seed(params, seed)
    run = layout.run_name(task, seed)
    batch = int(section(params, "quality")["batch_size"])
    placement = place(params, f"quality@{run}")
    val = layout.source_dir(task) / "validation"
    tokens_file = val / "tokens.safetensors"
    enc = encoded_from_tensors(load_metadata(tokens_file)["ids"] if tokens_file.is_file() else [],
                               load_tensors(tokens_file, "the extract stage"))
    src_out = load_tensors(val / "output_topk.safetensors", "the extract stage")
    pairing = read_json(layout.pairing_file(task), "the pair stage")
    amap = load_tensors(layout.alignment_dir() / "map.safetensors", "the align stage")["map"]
    models = {"target": layout.model_dir("target"), "semalign": layout.export_dir(task, seed)}
    adapters = {name: ModelAdapter(load_model(str(d), placement=placement)) for name, d in models.items()}
    reference = adapters["target"]  # final norm and LM head are untouched by the transfer
    load = source_loader(val)
    rows = position_rows(enc, batch, placement.shard)  # the positions of this process's batches
    aligned_top1 = torch.full((reference.n_layers, enc.n_supervised), -1, dtype=torch.long)
    for k in range(1, reference.n_layers + 1):
        aligned = aligned_state(pairing, k, load, amap)[rows]
        if len(rows):
            top1 = [z.argmax(-1).cpu() for z in aligned_logits_chunks(reference, aligned)]
            aligned_top1[k - 1, rows] = torch.cat(top1)
    results = {name: agreement(adapter, enc, batch, aligned_top1, src_out["topk_ids"], src_out["topk_logits"],
                               shard=placement.shard) for name, adapter in adapters.items()}
    if not placement.shard.is_main:
        return  # the main process writes what every process computed
    metrics = {"positions": enc.n_supervised}
    for name, result in results.items():
        metrics.update(result.metrics(name))
    metrics["kl_reduction"] = metrics["target_kl"] - metrics["semalign_kl"]
    write_json(layout.quality_metrics(run), metrics)
    layers = zip(results["target"].per_layer(), results["semalign"].per_layer())
    write_json(layout.quality_plot(run), [{"layer": k + 1, "target": t, "semalign": s}
                                           for k, (t, s) in enumerate(layers)])
    print(f"{run}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    launch.data_parallel("stages.quality")
    run_stage(f"quality@{layout.run_name(*task_and_seed(sys.argv[1:]))}", main)
