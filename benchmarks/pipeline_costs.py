"""Cost ratios of the pipeline, each measured within one run (machines are noisy).

1. extraction (forward with capture hooks + top-K head + writing one file per layer)
   vs a plain forward over the same tokens (target: <= 1.10x);
2. frontier stage cost for the first vs the last target block, per training step
   (target: about 1x: stage k must not re-run blocks below k);
3. with --repro-log, wall time and peak RSS of every stage from a `dvc repro` log.

Usage: python -m benchmarks.pipeline_costs [--source DIR --target DIR] [--repro-log FILE]
Without model dirs it builds a tiny pair (ratios then mostly measure overheads).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.timed_run import DONE, best_of
from pipeline.core.adapter import ModelAdapter
from pipeline.method.alignment import alignment_map
from pipeline.core.artifacts import save_tensors
from pipeline.method.capture import capture
from pipeline.core.data import encode
from pipeline.method.frontier import FrontierConfig, LayerTargets, OutputTargets, States, embed_states, train_block
from pipeline.core.loading import load_model, load_tokenizer
from pipeline.method.pairing import base_map
from pipeline.method.supervision import fisher_stats
from pipeline.tasks import builder


def extraction_ratio(source: Path, n: int, batch: int, repeats: int) -> None:
    tok = load_tokenizer(str(source))
    adapter = ModelAdapter(load_model(str(source), "float32"))
    records = builder("toy")({"transfer": n}, 0).splits["transfer"]
    enc = encode(tok, records, 256)
    layers = list(range(adapter.n_layers + 1))

    @torch.no_grad()
    def plain():
        for i in range(0, n, batch):
            adapter.model(input_ids=enc.input_ids[i:i + batch], attention_mask=enc.attention_mask[i:i + batch])

    def extract():
        got = capture(adapter, enc, layers, 64, batch, progress=False)
        with tempfile.TemporaryDirectory() as d:
            save_tensors(Path(d) / "topk.safetensors", {"i": got.topk_ids, "v": got.topk_logits})
            for l, h in got.hidden.items():
                save_tensors(Path(d) / f"layer_{l:02d}.safetensors", {"hidden": h})

    plain()  # warm-up
    t_plain, t_extract = best_of(plain, repeats), best_of(extract, repeats)
    print(f"extraction: plain forward {t_plain:.2f} s, capture+write {t_extract:.2f} s, "
          f"ratio {t_extract / t_plain:.2f}x (target <= 1.10x; {n} examples, {enc.input_ids.shape[1]} tokens)")


def frontier_ratio(source: Path, target: Path, n: int, steps: int) -> None:
    tok = load_tokenizer(str(target))
    src = ModelAdapter(load_model(str(source), "float32"))
    tgt = ModelAdapter(load_model(str(target), "float32"))
    enc = encode(tok, builder("toy")({"transfer": n}, 0).splits["transfer"], 256)
    got = capture(src, enc, [base_map(src.n_layers, tgt.n_layers)[0]], 64, 4, progress=False)
    amap = alignment_map(src.lm_head, tgt.lm_head)
    aligned = (next(iter(got.hidden.values())).float() @ amap.T)
    st = fisher_stats(tgt, aligned, 64, 1.0)
    targets = LayerTargets(st.topk_ids, st.topk_logits, st.topk_probs, aligned)
    output = OutputTargets(got.topk_ids, got.topk_logits)
    states = States(embed_states(tgt, enc.input_ids), enc.attention_mask, enc.supervised)
    cfg = FrontierConfig(steps=steps, batch_size=4, lr=1e-5)
    per_step = {}
    for k in (1, tgt.n_layers):
        start = time.perf_counter()
        train_block(tgt, k, states, targets if k < tgt.n_layers else None, output, cfg, progress=False)
        per_step[k] = (time.perf_counter() - start) / steps
    first, last = per_step[1], per_step[tgt.n_layers]
    print(f"frontier: first block {first:.3f} s/step, last block ({tgt.n_layers}) {last:.3f} s/step, "
          f"ratio {last / first:.2f}x (about 1x expected; the last block adds the full-vocabulary output KL)")


def stage_table(log: Path) -> None:
    rows = [m.groupdict() for m in DONE.finditer(log.read_text())]
    print(f"{'stage':32s} {'wall s':>8s} {'peak RSS MB':>12s}")
    for r in rows:
        print(f"{r['stage']:32s} {float(r['work']):8.1f} {int(r['rss']):12d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path)
    ap.add_argument("--target", type=Path)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repro-log", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    source, target = args.source, args.target
    if source is None or target is None:
        from pipeline.core.tiny import write_pair

        source, target = write_pair(tempfile.mkdtemp(prefix="semalign-bench-"))
    extraction_ratio(source, args.examples, 4, args.repeats)
    frontier_ratio(source, target, args.examples, args.steps)
    if args.repro_log:
        stage_table(args.repro_log)


if __name__ == "__main__":
    main()
