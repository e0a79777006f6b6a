"""Layer Gradient x Activation on the source, all layers in one backward pass.

score(l) = mean over examples of agg(dL_i/dh^(l) * h^(l)), with L_i the source's own
cross-entropy on example i's supervised tokens. Summing the per-example losses inside a
batch keeps gradients per example exact (examples do not interact), so one backward pass
per batch gives every layer's score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.core.adapter import ModelAdapter, input_device
from pipeline.core.data import EncodedSplit, batches
from pipeline.core.errors import PipelineError
from pipeline.compute.parallel import SINGLE, Shard

AGGREGATES = ("frobenius", "abs_sum", "signed_sum")


def per_example_loss(logits: torch.Tensor, input_ids: torch.Tensor, supervised: torch.Tensor) -> torch.Tensor:
    """(B,) mean CE of each example over its supervised prediction positions."""
    targets = torch.roll(input_ids, shifts=-1, dims=1)
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T)
    mask = supervised.float()
    return (ce * mask).sum(1) / mask.sum(1).clamp(min=1)


def aggregate(product: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, D) gradient*activation -> (B,) one number per example."""
    if how == "frobenius":
        return product.flatten(1).norm(dim=1)
    if how == "abs_sum":
        return product.abs().flatten(1).sum(1)
    if how == "signed_sum":
        return product.flatten(1).sum(1)
    raise PipelineError(f"unknown attribution aggregate {how!r}", f"set attribution.aggregate to one of {AGGREGATES}")


def layer_scores(adapter: ModelAdapter, encoded: EncodedSplit, batch_size: int,
                 how: str = "frobenius", progress: bool = True, shard: Shard = SINGLE) -> list[float] | None:
    """One score per source block (1..L), averaged over examples.

    Under several processes each scores its share of the batches; the main process adds the
    per-batch sums in batch order, as one process does (the others get None).
    """
    aggregate(torch.zeros(1, 1, 1), how)  # validate before heavy work
    if encoded.n_supervised == 0:
        raise PipelineError("the attribution split has no supervised tokens", "check data.max_length and the split")
    acts: list[torch.Tensor] = [None] * adapter.n_layers  # type: ignore[list-item]

    def keep(k: int):
        def hook(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            h.retain_grad()
            acts[k] = h
        return hook

    # Only activations need gradients: frozen weights spare a parameter-sized gradient buffer.
    trainable = [p for p in adapter.model.parameters() if p.requires_grad]
    adapter.model.requires_grad_(False)
    handles = [adapter.embedding.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))]
    handles += [adapter.block(k).register_forward_hook(keep(k - 1)) for k in range(1, adapter.n_layers + 1)]
    device = input_device(adapter.model)
    pieces = []
    try:
        for b, sl in tqdm(shard.mine(batches(len(encoded.ids), batch_size)), desc="attribute", disable=not progress):
            ids, attn = encoded.input_ids[sl].to(device), encoded.attention_mask[sl].to(device)
            out = adapter.model(input_ids=ids, attention_mask=attn)
            per_example_loss(out.logits, ids.to(out.logits.device), encoded.supervised[sl].to(out.logits.device)
                             ).sum().backward()
            sums = torch.zeros(adapter.n_layers, dtype=torch.float64)
            for k, h in enumerate(acts):
                live = attn.to(h.device).unsqueeze(-1).to(h.dtype)
                sums[k] = float(aggregate((h.grad * h * live).detach().float(), how).double().sum())
            pieces.append((b, sums))
    finally:
        for h in handles:
            h.remove()
        for p in trainable:
            p.requires_grad_(True)
    per_batch = shard.gather(pieces)
    if per_batch is None:
        return None
    totals = torch.zeros(adapter.n_layers, dtype=torch.float64)
    for sums in per_batch:
        totals += sums
    return (totals / len(encoded.ids)).tolist()

