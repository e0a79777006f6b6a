"""Stage `align`: semantic bases of both LM heads and the alignment map A (D_t x D_s)."""

from pipeline.compute import launch
from pipeline.core import layout
from pipeline.method.alignment import alignment_map
from pipeline.compute.placement import place
from pipeline.core.artifacts import atomic_path, save_tensors, write_json
from pipeline.core.loading import check_same_vocab, load_lm_head, load_tokenizer
from pipeline.core.params import load_params, section
from pipeline.core.runner import CostTag, run_stage


def main() -> None:
    all_params = load_params()
    params = section(all_params, "alignment")
    place(all_params, "align", uses_device=False, why_cpu="a float64 SVD of the two LM heads, read without the models")
    src_dir, tgt_dir = layout.model_dir("source"), layout.model_dir("target")
    source_head, target_head = load_lm_head(src_dir), load_lm_head(tgt_dir)
    check_same_vocab(load_tokenizer(str(src_dir)), load_tokenizer(str(tgt_dir)),
                     source_head.shape[0], target_head.shape[0])
    amap = alignment_map(source_head, target_head, params.get("rtol"))
    with atomic_path(layout.alignment_dir(), is_dir=True) as tmp:
        save_tensors(tmp / "map.safetensors", {"map": amap})
        write_json(tmp / "info.json", {"source_width": source_head.shape[1], "target_width": target_head.shape[1],
                                       "vocab": source_head.shape[0], "rtol": params.get("rtol")})


if __name__ == "__main__":
    launch.one_process("stages.align")
    run_stage("align", main, CostTag("semalign"))
