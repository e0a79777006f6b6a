"""Held-out agreement along the frontier chain: where does a chain help or hurt?

Point k of the curve is the target with blocks 1..k replaced by the chain's trained blocks
and blocks k+1..L original (k = 0: the untouched target; k = L: the exported model). Each
point is scored on the validation split by ``pipeline.evaluation.heldout``: KL(source || model) and top-1
agreement per example, so every point carries a paired-bootstrap interval of its difference
to the untouched target.

Cost: the validation split's states after block k are carried from point to point (one pass
of each trained block), but each point runs the original blocks k+1..L again, so the whole
curve costs about L/2 forward passes of the target; ``points`` thins it, and points before
the first block the chain changed are point 0 itself (not recomputed).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from pipeline.core.adapter import ModelAdapter, input_device
from pipeline.core.data import EncodedSplit, batches
from pipeline.method.export import install_block
from pipeline.evaluation.heldout import Agreement, agreement

BlockLoader = Callable[[int], dict[str, torch.Tensor]]


def curve_points(n_layers: int, every: int) -> list[int]:
    """0, every, 2 every, ..., always ending with the last block (the exported model)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return sorted(set(range(0, n_layers + 1, every)) | {0, n_layers})


@torch.no_grad()
def _run(adapter: ModelAdapter, hidden: torch.Tensor, attn: torch.Tensor, start: int, end: int,
         batch_size: int) -> torch.Tensor:
    if start > end:
        return hidden
    return torch.cat([adapter.run_blocks(hidden[sl], attn[sl], start, end)
                      for sl in batches(hidden.shape[0], batch_size)])


@torch.no_grad()
def heldout_curve(adapter: ModelAdapter, encoded: EncodedSplit, trained_block: BlockLoader,
                  src_ids: torch.Tensor, src_logits: torch.Tensor, points: Iterable[int],
                  batch_size: int = 4, progress: bool = True) -> dict[int, Agreement]:
    """Agreement with the source at each point k (see the module docstring).

    ``adapter`` holds the *untouched* target; its blocks are replaced in place, one by one, by
    ``trained_block(k)`` (a block state dict), so afterwards it is the fully transferred model.
    src_ids/src_logits: (P, K) the source's top-K outputs at the validation split's supervised
    positions, in (example, position) order."""
    wanted = sorted(set(points) | {0})  # the untouched target: every change is measured against it
    n = adapter.n_layers
    device = input_device(adapter.model)
    mask, attn, offsets = encoded.supervised.to(device), encoded.attention_mask.to(device), encoded.offsets()
    hidden = torch.cat([adapter.embed(encoded.input_ids[sl].to(device))
                        for sl in batches(len(encoded.ids), batch_size)])
    out: dict[int, Agreement] = {}
    changed = False  # while no block so far differs from the original, point k is point 0
    for k in tqdm(range(0, n + 1), desc="held-out curve", disable=not progress):
        if k > 0:
            before = {name: t.clone() for name, t in adapter.block(k).state_dict().items()}
            install_block(adapter, k, trained_block(k))
            changed = changed or any(not torch.equal(t, before[name])
                                     for name, t in adapter.block(k).state_dict().items())
            hidden = _run(adapter, hidden, attn, k, k, batch_size)
        if k in wanted and k > 0 and not changed:
            out[k] = out[0]
        elif k in wanted:
            last = _run(adapter, hidden, attn, k + 1, n, batch_size)
            out[k] = agreement(adapter, last[mask], src_ids, src_logits, offsets)
    return out


def summarise(points: dict[int, Agreement], n_boot: int = 10000) -> list[dict]:
    """One row per point: mean KL and top-1 agreement, and their paired-bootstrap differences
    to the untouched target (point 0) with 95 % intervals."""
    from pipeline.evaluation.stats import paired_bootstrap

    base = points[0]
    rows = []
    for k, a in sorted(points.items()):
        kl = paired_bootstrap(base.kl, a.kl, base.positions, n_boot)
        top1 = paired_bootstrap(base.top1, a.top1, base.positions, n_boot)
        rows.append({"block": k, "kl": a.mean_kl, "top1": a.mean_top1,
                     "kl_diff": kl["diff"], "kl_diff_low": kl["ci_low"], "kl_diff_high": kl["ci_high"],
                     "top1_diff": top1["diff"], "top1_diff_low": top1["ci_low"], "top1_diff_high": top1["ci_high"]})
    return rows


def save_plot(path, rows: list[dict], title: str) -> None:
    """KL and top-1 agreement against the number of transferred blocks, with the paired 95 %
    intervals of the change; the dashed line is the untouched target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.core.artifacts import atomic_path

    ks = [r["block"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, name, label in ((axes[0], "kl", "KL(source ‖ model)"), (axes[1], "top1", "top-1 agreement")):
        base = rows[0][name]
        y = [r[name] for r in rows]
        err = [[r[name] - (base + r[f"{name}_diff_low"]) for r in rows],
               [(base + r[f"{name}_diff_high"]) - r[name] for r in rows]]
        ax.errorbar(ks, y, yerr=err, marker="o", capsize=3)
        ax.axhline(base, ls="--", c="grey", lw=1)
        ax.set_xlabel("blocks transferred (1..k)")
        ax.set_ylabel(label)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
