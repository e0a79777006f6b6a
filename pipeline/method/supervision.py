"""Source-side supervision for each target block: aligned states and aligned logits.

For target block k paired with source layer l(k): h~_k = A h_s^(l(k)) / ||h_s^(l(k))||
(or the interpolated source state), and the "target-space aligned logits"
z~_k = W_t n_t(h~_k), read through the target's own final norm and LM head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from pipeline.core import layout
from pipeline.core.adapter import ModelAdapter
from pipeline.method.alignment import align, mix_layers
from pipeline.core.artifacts import load_tensors
from pipeline.method.fisher import FisherAccumulator, FisherStats

SourceLoader = Callable[[int], torch.Tensor]


def source_loader(directory: Path) -> SourceLoader:
    """Reads (P, D_s) source states of one layer from an extraction directory, cached."""
    cache: dict[int, torch.Tensor] = {}

    def load(layer: int) -> torch.Tensor:
        if layer not in cache:
            cache.clear()  # the stages walk layers in order; keep at most one in memory
            cache[layer] = load_tensors(layout.layer_file(directory, layer), "the extract stage")["hidden"]
        return cache[layer]

    return load


def source_state(pairing: dict, k: int, load: SourceLoader) -> torch.Tensor:
    """The source state supervising target block k (1-based): (P, D_s) float32."""
    if "interp" in pairing:
        it = pairing["interp"][k - 1]
        return mix_layers(load(it["a"]), load(it["b"]), it["lam"])
    return load(pairing["pairs"][k - 1]).float()


def aligned_state(pairing: dict, k: int, load: SourceLoader, amap: torch.Tensor) -> torch.Tensor:
    """h~_k: (P, D_t) float32."""
    return align(source_state(pairing, k, load), amap)


def aligned_residual(pairing: dict, k: int, load: SourceLoader, amap: torch.Tensor) -> torch.Tensor:
    """The aligned source residual supervising block k's contribution h^(k) - h^(k-1):
    the source's own write over its paired span, h_s^(l(k)) - h_s^(l(k-1)) (l(0) = the
    embedding), decomposed and recomposed like a state. (P, D_t) float32."""
    prev = load(0).float() if k == 1 else source_state(pairing, k - 1, load)
    return align(source_state(pairing, k, load) - prev, amap)


def supervision(pairing: dict, k: int, load: SourceLoader, amap: torch.Tensor, interface: str) -> torch.Tensor:
    """What the layer objective of block k matches, at the chosen interface (fisher.interface)."""
    return aligned_state(pairing, k, load, amap) if interface == "state" else aligned_residual(pairing, k, load, amap)


@torch.no_grad()
def aligned_logits_chunks(target: ModelAdapter, aligned: torch.Tensor, chunk: int = 256):
    """Yield (P_chunk, V) aligned logits z~ = W_t n_t(h~), a chunk at a time."""
    for i in range(0, aligned.shape[0], chunk):
        h = aligned[i:i + chunk].to(target.lm_head.device, target.lm_head.dtype)
        yield target.logit_lens(h).float()


def fisher_stats(target: ModelAdapter, aligned: torch.Tensor, top_k: int, tau: float,
                 chunk: int = 256) -> FisherStats:
    acc = FisherAccumulator(top_k, tau)
    for z in aligned_logits_chunks(target, aligned, chunk):
        acc.add(z)
    return acc.result()
