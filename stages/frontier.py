"""Stage `frontier@KEY` (e.g. `frontier@mmlu-s0-L03`): train target block k of seed 0's chain alone.

Reads h^(k-1) from the previous chain stage, the layer's supervision from the fisher
stage (and the source output logits for the last block), writes the trained block and
h^(k) for the next stage, and logs the loss of every step through DVCLive as it trains.
"""

import sys

import torch

from pipeline.compute import launch
from pipeline.core import chain, layout
from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import atomic_path, load_metadata, load_tensors, save_tensors, write_json
from pipeline.compute.placement import place
from pipeline.core.errors import PipelineError
from pipeline.method.frontier import LayerTargets, OutputTargets, States, frontier_config, train_block
from pipeline.core.loading import load_model_blocks, torch_dtype
from pipeline.core.training_log import LOSS, TrainingLog
from pipeline.core.params import check_task, load_params, section, storage_dtype
from pipeline.core.runner import CostTag, is_main_process, run_stage


def layer_targets(task: str, k: int, tau: float) -> LayerTargets:
    path = layout.layer_file(layout.fisher_dir(task), k)
    fisher = load_tensors(path, "the fisher stage")
    built = load_metadata(path).get("tau")
    if built is None or float(built) != tau:  # d must be scaled by the tau p~ was built with
        raise PipelineError(f"{path} was built with tau {built}, params.yaml's fisher.tau is {tau}",
                            f"re-run the fisher stage (`dvc repro fisher@{task}`)")
    return LayerTargets(fisher["topk_ids"], fisher["topk_logits"], fisher["topk_probs"], fisher["aligned"])


def main() -> None:
    train(sys.argv[1])


def train(stage_key: str) -> None:
    params = load_params()
    entry = chain.load_chain().get(stage_key)
    if entry is None:
        raise PipelineError(f"{stage_key} is not in chain.yaml", "run `python -m pipeline.core.chain`")
    task, seed, k = chain.parse_key(stage_key)
    check_task(params, task)
    if seed is None:
        raise PipelineError(f"{stage_key} is the embedding, not a frontier block", f"run `dvc repro embed@{task}`")
    cfg = frontier_config(params, seed)
    # Block k alone (k..L when the stage adds the output KL): the others are never run.
    n_layers = chain.target_depth(str(section(params, "models")["target"]))
    placement = place(params, f"frontier@{stage_key}")
    target = ModelAdapter(load_model_blocks(layout.model_dir("target"), placement.dtype, k,
                                            None if cfg.has_output_kl(k, n_layers) else k, device=placement.device))
    target.check_layer(k, "frontier layer")
    prev = load_tensors(layout.frontier_dir(task, entry["prev"]) / "states.safetensors", f"frontier@{entry['prev']}")
    source_tokens = load_tensors(layout.source_dir(task) / "transfer" / "tokens.safetensors", "the extract stage")
    if not torch.equal(prev["input_ids"], source_tokens["input_ids"]):
        raise PipelineError(f"the chain's tokens differ from the source extraction of {task}",
                            "re-run the embed and frontier stages of this task (`dvc repro`)")
    states = States(prev["hidden"], prev["attention_mask"], prev["supervised"].bool())
    is_last = k == target.n_layers
    targets = layer_targets(task, k, cfg.tau) if cfg.has_layer_objective(k, target.n_layers) else None
    output = None
    if cfg.has_output_kl(k, target.n_layers):
        out = load_tensors(layout.source_dir(task) / "transfer" / "output_topk.safetensors", "the extract stage")
        output = OutputTargets(out["topk_ids"], out["topk_logits"])
    store = torch_dtype(storage_dtype(params))
    log = None
    if is_main_process():  # it alone logs and writes what every process trained
        log = TrainingLog(layout.frontier_live_dir(task, stage_key), trains=cfg.trains(k, n_layers) and cfg.steps > 0)
    result = train_block(target, k, states, targets, output, cfg, store_dtype=store, shard=placement.shard,
                         on_step=None if log is None else lambda loss: log.step({LOSS: loss}))
    if log is None:
        return
    with atomic_path(layout.frontier_dir(task, stage_key), is_dir=True) as tmp:
        save_tensors(tmp / "block.safetensors", result.block_state, {"layer": k, "prefix": target.block_prefix(k)})
        save_tensors(tmp / "states.safetensors", {"hidden": result.states_out.to(store), "input_ids": prev["input_ids"],
                                                  "attention_mask": prev["attention_mask"],
                                                  "supervised": prev["supervised"]})
        write_json(tmp / "log.json", {"key": stage_key, "seed": seed, "layer": k, "objective": "output_kl" if is_last else cfg.objective,
                                      "before": result.objective_before, "after": result.objective_after,
                                      "losses": result.losses})
    log.close({"before": result.objective_before, "after": result.objective_after}, declared=(LOSS,))
    print(f"{stage_key}: objective {result.objective_before:.4g} -> {result.objective_after:.4g}")


if __name__ == "__main__":
    launch.data_parallel("stages.frontier")
    try:
        TAG = CostTag("semalign", *chain.parse_key(sys.argv[1])[:2])
    except PipelineError:
        TAG = None  # main() reports the malformed key
    run_stage(f"frontier@{sys.argv[1]}", main, TAG)
