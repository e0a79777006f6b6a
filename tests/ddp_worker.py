"""Started by tests/test_data_parallel.py through the stages' own launcher (params.yaml in the
working directory says compute.processes: 2): each process compares one data-parallel step
with the single-process step it computes itself on the same global batch, and the main
process writes what it found to the JSON file named on the command line.

    python -m ddp_worker TINY_PAIR_DIR OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pipeline.compute import launch


def frontier_gradients(target_dir: Path, placement) -> dict:
    """dL/dtheta of a frontier block: DDP (each process runs half the batch) vs one process."""
    from pipeline.core.adapter import ModelAdapter
    from pipeline.method.frontier import FrontierConfig, OutputTargets, States, _Stage, data_parallel_block
    from pipeline.core.loading import load_model_blocks

    torch.manual_seed(0)
    n, t = 5, 12
    k = json.loads((target_dir / "config.json").read_text())["num_hidden_layers"]  # the last block: output KL
    adapter = ModelAdapter(load_model_blocks(target_dir, "float32", k, k))
    mask = torch.ones(n, t, dtype=torch.long)
    mask[1, 9:] = 0
    sup = torch.zeros(n, t, dtype=torch.bool)
    sup[:, 3:8] = True
    states = States(torch.randn(n, t, adapter.width), mask, sup)
    p = int(sup.sum())
    output = OutputTargets(torch.randint(0, adapter.vocab_size, (p, 8)), torch.randn(p, 8))
    cfg = FrontierConfig(steps=1, batch_size=n)
    block = adapter.block(k)
    adapter.model.requires_grad_(False)
    block.requires_grad_(True)
    idx = torch.tensor([4, 0, 3, 1, 2])  # a shuffled global batch of 5: shares of 3 and 2 examples

    single = _Stage(adapter, k, states, None, output, cfg, torch.float32)
    reference_loss = single.backward(idx, "one process")
    reference = {name: prm.grad.clone() for name, prm in block.named_parameters()}
    block.zero_grad(set_to_none=True)

    stage = _Stage(adapter, k, states, None, output, cfg, torch.float32, placement.shard)
    with data_parallel_block(adapter, k, placement.shard):  # the block in DDP, as train_block runs it
        loss = stage.backward(idx, "data parallel")
    worst = max(float((prm.grad - reference[name]).abs().max() / reference[name].abs().max().clamp(min=1e-12))
                for name, prm in block.named_parameters())
    return {"frontier_loss": loss, "frontier_reference_loss": reference_loss,
            "frontier_max_relative_grad_diff": worst}


def sft_step(target_dir: Path, placement) -> dict:
    """One SFT step's logged loss and gradient norm: data-parallel vs one process."""
    from pipeline.core import lora
    from pipeline.core.adapter import ModelAdapter
    from pipeline.baselines.context import trim
    from pipeline.baselines.losses import supervised_ce
    from pipeline.core.data import encode
    from pipeline.core.loading import load_model, load_tokenizer
    from pipeline.core.lora import LoraSettings
    from pipeline.compute.parallel import SINGLE
    from pipeline.tasks import toy
    from pipeline.baselines.training import TrainSettings, positions, train

    records = toy.build({"attribution": 0, "transfer": 7, "validation": 0, "evaluation": 0}, seed=0).splits["transfer"]
    data = encode(load_tokenizer(str(target_dir)), records, 48, "answer")
    settings = TrainSettings(epochs=1, max_steps=1, batch_size=7, lr=1e-3, warmup_ratio=0.0, grad_clip=0.0)
    logs = {}
    for name, shard in (("single", SINGLE), ("parallel", placement.shard)):
        torch.manual_seed(0)
        model = lora.attach(load_model(str(target_dir), "float32"), LoraSettings(dropout=0.0))
        adapter = ModelAdapter(model.get_base_model())

        def loss_fn(rows):
            ids, m, s = trim(data, rows)
            return supervised_ce(adapter.supervised_logits(ids, m, s), ids, s), {}

        logs[name] = train(list(model.parameters()), [torch.tensor([6, 2, 0, 5, 1, 3, 4])], loss_fn, settings,
                           name, shard=shard, units=positions(data))[0]
    return {"sft_single": logs["single"], "sft_parallel": logs["parallel"]}


def main() -> None:
    from pipeline.compute.placement import place
    from pipeline.core.params import load_params

    target_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    placement = place(load_params(), "ddp-check")
    found = {"world": placement.shard.world, **frontier_gradients(target_dir, placement),
             **sft_step(target_dir, placement)}
    if placement.shard.is_main:
        out.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    launch.data_parallel("ddp_worker")
    main()
