"""Stage `fisher@TASK`: per target layer, the aligned source state h~_k and the top-K
Fisher statistics of the aligned logits z~_k = W_t n_t(h~_k) on the transfer split."""

import sys

from tqdm.auto import tqdm

from pipeline.compute import launch
from pipeline.core import chain, layout
from pipeline.core.adapter import ModelAdapter
from pipeline.method.alignment import align
from pipeline.core.artifacts import load_tensors, read_json, save_tensors
from pipeline.compute.placement import place
from pipeline.core.errors import PipelineError
from pipeline.core.loading import load_model, torch_dtype
from pipeline.method.pairing import validate_pairing
from pipeline.compute.parallel import shared_dir
from pipeline.core.params import check_task, fisher_tau, load_params, section
from pipeline.core.runner import CostTag, run_stage
from pipeline.method.supervision import fisher_stats, source_loader, supervision


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    cfg, tau = section(params, "fisher"), fisher_tau(params)
    pairing = read_json(layout.pairing_file(task), "the pair stage")
    validate_pairing(pairing)
    amap = load_tensors(layout.alignment_dir() / "map.safetensors", "the align stage")["map"]
    placement = place(params, f"fisher@{task}")
    target = ModelAdapter(load_model(str(layout.model_dir("target")), placement=placement))
    if pairing["n_target"] != target.n_layers:
        raise PipelineError(f"pairing is for {pairing['n_target']} target layers, the target has {target.n_layers}",
                            "re-run the pair stage for this model pair (`dvc repro`)")
    load = source_loader(layout.source_dir(task) / "transfer")
    interface = str(cfg.get("interface", "state"))
    store = torch_dtype(str(section(params, "extract").get("hidden_dtype", "bfloat16")))
    shard = placement.shard  # layers are independent: each process writes its share of the layer files
    with shared_dir(layout.fisher_dir(task), shard) as tmp:
        if shard.is_main:
            save_tensors(layout.layer_file(tmp, 0), {"aligned": align(load(0), amap).to(store)}, {"layer": 0})
        # Only blocks with a layer objective read their supervision (frontier.layer_from).
        first = max(1, chain.block_number(int(section(params, "frontier").get("layer_from", 1)),
                                                  target.n_layers))
        for _, k in tqdm(shard.mine(range(first, target.n_layers)), desc=f"fisher {task}"):
            aligned = supervision(pairing, k, load, amap, interface)
            stats = fisher_stats(target, aligned, int(cfg["top_k"]), tau)
            save_tensors(layout.layer_file(tmp, k), {
                "aligned": aligned.to(store), "topk_ids": stats.topk_ids, "topk_logits": stats.topk_logits,
                "topk_probs": stats.topk_probs, "diag_mean": stats.diag_mean}, {"layer": k, "tau": tau, "interface": interface})


if __name__ == "__main__":
    launch.data_parallel("stages.fisher")
    run_stage(f"fisher@{sys.argv[1]}", main, CostTag("semalign", sys.argv[1]))
