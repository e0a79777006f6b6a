"""Stage `analysis@TASK-SEED`: the paper's analysis figures for one run (task, seed).

- layer-by-layer debiased linear CKA of source vs target hidden states on the held-out
  validation tokens, for the untouched target and for the transferred model;
- attribution score per source layer, the pairing map, and the frontier stages' per-step
  loss curves (from their DVCLive logs), gathered into one file per task so that the
  top-level `plots:` of dvc.yaml can name them without knowing the task list.

Writes plots/analysis/KIND/TASK-sSEED.{json,png} and metrics/analysis/TASK-sSEED.json.
"""

import sys

import torch

from pipeline.compute import launch
from pipeline.core import chain, layout
from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import load_metadata, load_tensors, read_json, write_json
from pipeline.method.cka import cka_matrix, prepare
from pipeline.compute.placement import place
from pipeline.core.data import encoded_from_tensors
from pipeline.core.errors import PipelineError
from pipeline.method.figures import (attribution_records, cka_records, loss_records, paired_cka, pairing_records,
                                     save_heatmaps)
from pipeline.core.loading import load_model
from pipeline.core.training_log import read_losses
from pipeline.core.params import check_diagnostics_task, check_seed, check_task, load_params, section, task_and_seed
from pipeline.method.quality import evenly_spaced, target_states
from pipeline.core.runner import run_stage


def position_subset(n: int, limit: int) -> torch.Tensor:
    """Evenly spaced rows when there are more supervised positions than the Gram budget allows."""
    if limit < 4:
        raise PipelineError(f"analysis.max_positions is {limit}", "set it to at least 4 (CKA needs 4 rows)")
    return evenly_spaced(n, limit)


def loss_curves(task: str, seed: int) -> dict[str, list[float]]:
    keys = chain.chain_keys(chain.load_chain(), task, seed)
    return {k: read_losses(layout.frontier_live_dir(task, k)) for k in keys}


def main() -> None:
    task, seed = task_and_seed(sys.argv[1:])
    params = load_params()
    check_task(params, task)
    check_diagnostics_task(params, task)
    check_seed(params, seed)
    run = layout.run_name(task, seed)
    cfg = section(params, "analysis")
    placement = place(params, f"analysis@{run}")
    val = layout.source_dir(task) / "validation"
    tokens_file = val / "tokens.safetensors"
    enc = encoded_from_tensors(load_metadata(tokens_file)["ids"] if tokens_file.is_file() else [],
                               load_tensors(tokens_file, "the extract stage"))
    pairing = read_json(layout.pairing_file(task), "the pair stage")
    scores = read_json(layout.attribution_file(task), "the attribute stage")["scores"]
    rows = position_subset(enc.n_supervised, int(cfg["max_positions"]))

    states = {}
    for name, model_dir in (("before", layout.model_dir("target")), ("after", layout.export_dir(task, seed))):
        adapter = ModelAdapter(load_model(str(model_dir), placement=placement))
        states[name] = target_states(adapter, enc, int(cfg["batch_size"]), progress=False, rows=rows,
                                     shard=placement.shard)
        del adapter
    if not placement.shard.is_main:
        return  # the main process has every process's states and writes the figures

    source = []
    for layer in range(1, int(pairing["n_source"]) + 1):
        hidden = load_tensors(layout.layer_file(val, layer), "the extract stage")["hidden"]
        if hidden.shape[0] != enc.n_supervised:
            raise PipelineError(f"source layer {layer} has {hidden.shape[0]} rows, the tokens {enc.n_supervised} "
                                "supervised positions", "re-run the extract stage for this task")
        source.append(prepare(hidden[rows]))

    matrices = {name: cka_matrix(source, hs) for name, hs in states.items()}  # hs: already the rows

    pairs = [int(p) for p in pairing["pairs"]]
    for name, matrix in matrices.items():
        write_json(layout.analysis_plot(f"cka_{name}", run), cka_records(matrix))
    write_json(layout.analysis_plot("attribution", run), attribution_records(scores))
    write_json(layout.analysis_plot("pairing", run), pairing_records(pairing))
    write_json(layout.analysis_plot("frontier_loss", run), loss_records(loss_curves(task, seed)))
    save_heatmaps(layout.analysis_plot("cka_heatmap", run, ".png"),
                  {"untouched target": matrices["before"], "after transfer": matrices["after"]}, pairs,
                  f"{task}: linear CKA, source vs target layers ({len(rows)} positions)")
    metrics = {"cka_paired_before": paired_cka(matrices["before"], pairs),
               "cka_paired_after": paired_cka(matrices["after"], pairs)}
    write_json(layout.analysis_metrics(run), metrics)
    print(f"{run}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    launch.data_parallel("stages.analysis")
    run_stage(f"analysis@{layout.run_name(*task_and_seed(sys.argv[1:]))}", main)
