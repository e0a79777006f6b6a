"""Stage `fisher@TASK`: per target layer, the aligned source state h~_k and the top-K
Fisher statistics of the aligned logits z~_k = W_t n_t(h~_k) on the transfer split."""

import sys

from tqdm.auto import tqdm

from pipeline import chain, layout
from pipeline.adapter import ModelAdapter
from pipeline.alignment import align
from pipeline.artifacts import atomic_path, load_tensors, read_json, save_tensors
from pipeline.errors import PipelineError
from pipeline.loading import load_model, torch_dtype
from pipeline.pairing import validate_pairing
from pipeline.params import check_task, compute_dtype, fisher_tau, load_params, section
from pipeline.runner import CostTag, run_stage
from pipeline.supervision import fisher_stats, source_loader, supervision


def main() -> None:
    task = sys.argv[1]
    params = load_params()
    check_task(params, task)
    cfg, tau = section(params, "fisher"), fisher_tau(params)
    pairing = read_json(layout.pairing_file(task), "the pair stage")
    validate_pairing(pairing)
    amap = load_tensors(layout.alignment_dir() / "map.safetensors", "the align stage")["map"]
    target = ModelAdapter(load_model(str(layout.model_dir("target")), compute_dtype(params)))
    if pairing["n_target"] != target.n_layers:
        raise PipelineError(f"pairing is for {pairing['n_target']} target layers, the target has {target.n_layers}",
                            "re-run the pair stage for this model pair (`dvc repro`)")
    load = source_loader(layout.source_dir(task) / "transfer")
    interface = str(cfg.get("interface", "state"))
    store = torch_dtype(str(section(params, "extract").get("hidden_dtype", "bfloat16")))
    with atomic_path(layout.fisher_dir(task), is_dir=True) as tmp:
        save_tensors(layout.layer_file(tmp, 0), {"aligned": align(load(0), amap).to(store)}, {"layer": 0})
        # Only blocks with a layer objective read their supervision (frontier.layer_from).
        first = max(1, chain.block_number(int(section(params, "frontier").get("layer_from", 1)),
                                                  target.n_layers))
        for k in tqdm(range(first, target.n_layers), desc=f"fisher {task}"):
            aligned = supervision(pairing, k, load, amap, interface)
            stats = fisher_stats(target, aligned, int(cfg["top_k"]), tau)
            save_tensors(layout.layer_file(tmp, k), {
                "aligned": aligned.to(store), "topk_ids": stats.topk_ids, "topk_logits": stats.topk_logits,
                "topk_probs": stats.topk_probs, "diag_mean": stats.diag_mean}, {"layer": k, "tau": tau, "interface": interface})


if __name__ == "__main__":
    run_stage(f"fisher@{sys.argv[1]}", main, CostTag("semalign", sys.argv[1]))
