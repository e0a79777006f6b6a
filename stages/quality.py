"""Stage `quality@TASK-SEED`: SemAlign's transfer quality on the held-out validation split.

- The headline: held-out KL(source || model) and top-1 agreement of the untouched target and
  of SemAlign's transferred target, the KL reduction and the top-1 gain with 95 % paired
  bootstrap intervals, read from the heldout stages' per-example records (no model runs again).
- Per-layer aligned-logit agreement of both, at ``quality.max_positions`` evenly spaced
  supervised positions (each layer reads the full vocabulary at each position). Data parallel:
  each process scores the positions in its share of the batches; the main process adds the
  hits and writes the metrics."""

import sys

import torch

from pipeline.compute import launch
from pipeline.core import layout
from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import load_metadata, load_tensors, read_json, write_json
from pipeline.compute.placement import place
from pipeline.core.data import encoded_from_tensors
from pipeline.core.errors import PipelineError
from pipeline.evaluation.heldout import Agreement
from pipeline.core.loading import load_model
from pipeline.core.params import check_diagnostics_task, check_seed, check_task, load_params, section, task_and_seed
from pipeline.method.quality import evenly_spaced, headline, layer_hits, shard_rows, stack_layers, state_pieces
from pipeline.core.runner import run_stage
from pipeline.method.supervision import aligned_logits_chunks, aligned_state, source_loader


def heldout_records(task: str, seed: int) -> tuple[Agreement, Agreement]:
    """The untouched target's and SemAlign's per-example held-out records (the heldout stages')."""
    return tuple(Agreement.from_json(read_json(layout.heldout_examples(key, task),
                                               f"the heldout stage of {key} on {task}"))
                 for key in ("target", f"semalign-s{seed}"))


def main() -> None:
    task, seed = task_and_seed(sys.argv[1:])
    params = load_params()
    check_task(params, task)
    check_diagnostics_task(params, task)
    check_seed(params, seed)
    cfg = section(params, "quality")
    limit = int(cfg.get("max_positions", 0))
    if limit < 1:
        raise PipelineError(f"quality.max_positions is {limit}", "set it to the number of validation positions to "
                            "score per layer, e.g. 256")
    run = layout.run_name(task, seed)
    batch = int(cfg["batch_size"])
    val = layout.source_dir(task) / "validation"
    tokens_file = val / "tokens.safetensors"
    enc = encoded_from_tensors(load_metadata(tokens_file)["ids"] if tokens_file.is_file() else [],
                               load_tensors(tokens_file, "the extract stage"))
    pairing = read_json(layout.pairing_file(task), "the pair stage")
    amap = load_tensors(layout.alignment_dir() / "map.safetensors", "the align stage")["map"]
    summary = headline(*heldout_records(task, seed))  # before the models load: a missing record fails at once
    placement = place(params, f"quality@{run}")  # a bad compute setting fails before the models load
    shard = placement.shard
    rows = evenly_spaced(enc.n_supervised, limit)
    own = shard_rows(enc, batch, rows, shard)  # the scored positions in this process's batches
    models = {"target": layout.model_dir("target"), "semalign": layout.export_dir(task, seed)}
    adapters = {name: ModelAdapter(load_model(str(d), placement=placement)) for name, d in models.items()}
    reference = adapters["target"]  # final norm and LM head are untouched by the transfer
    load = source_loader(val)
    aligned_top1 = []
    for k in range(1, reference.n_layers + 1):
        aligned = aligned_state(pairing, k, load, amap)[own]
        aligned_top1.append(torch.cat([z.argmax(-1).cpu() for z in aligned_logits_chunks(reference, aligned)]
                                      or [torch.zeros(0, dtype=torch.long)]))
    hits = {}
    for name, adapter in adapters.items():  # the scored positions of this process's batches, in order
        hs = stack_layers(adapter, [h for _, h in state_pieces(adapter, enc, batch, rows=rows, shard=shard)])
        hits[name] = [layer_hits(adapter, h, top1) for h, top1 in zip(hs, aligned_top1)]
    counted = shard.gather([(shard.rank, hits)])  # every process's hits, on the main process
    if counted is None:
        return  # the main process writes what every process counted
    metrics, per_layer = {**summary, "positions": len(rows), "positions_total": enc.n_supervised}, []
    for name in adapters:
        layers = [sum(c[name][k] for c in counted) / max(len(rows), 1) for k in range(reference.n_layers)]
        metrics[f"{name}_layer_agreement"] = sum(layers) / len(layers)
        per_layer.append(layers)
    write_json(layout.quality_metrics(run), metrics)
    write_json(layout.quality_plot(run), [{"layer": k + 1, "target": t, "semalign": s}
                                           for k, (t, s) in enumerate(zip(*per_layer))])
    print(f"{run}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    launch.data_parallel("stages.quality")
    run_stage(f"quality@{layout.run_name(*task_and_seed(sys.argv[1:]))}", main)
