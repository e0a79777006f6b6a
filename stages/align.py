"""Stage `align`: semantic bases of both LM heads and the alignment map A (D_t x D_s)."""

from pipeline import layout
from pipeline.adapter import ModelAdapter
from pipeline.alignment import alignment_map
from pipeline.artifacts import atomic_path, save_tensors, write_json
from pipeline.loading import check_same_vocab, load_model, load_tokenizer
from pipeline.params import load_params, section
from pipeline.runner import run_stage


def main() -> None:
    params = section(load_params(), "alignment")
    src_dir, tgt_dir = layout.model_dir("source"), layout.model_dir("target")
    source = ModelAdapter(load_model(str(src_dir), "float32"))
    target = ModelAdapter(load_model(str(tgt_dir), "float32"))
    check_same_vocab(load_tokenizer(str(src_dir)), load_tokenizer(str(tgt_dir)), source.vocab_size, target.vocab_size)
    amap = alignment_map(source.lm_head, target.lm_head, params.get("rtol"))
    with atomic_path(layout.alignment_dir(), is_dir=True) as tmp:
        save_tensors(tmp / "map.safetensors", {"map": amap})
        write_json(tmp / "info.json", {"source_width": source.width, "target_width": target.width,
                                       "vocab": source.vocab_size, "rtol": params.get("rtol")})


if __name__ == "__main__":
    run_stage("align", main)
