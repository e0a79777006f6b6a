"""The source-model baselines (SEEKING, LaTen) on the stages' own launcher: two processes train
the model one process trains, and the runs compute in the placement's precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_baselines_inputs import stage

from pipeline.baselines import runner
from pipeline.compute.parallel import SINGLE
from pipeline.compute.placement import Placement


def _run(tiny_root: Path, where: Path, params: dict, method: str, processes: int) -> tuple[Path, str]:
    root = where / f"processes-{processes}"
    shutil.copytree(tiny_root, root)
    (root / "params.yaml").write_text(yaml.safe_dump({**params, "compute": {"device": "cpu", "processes": processes}}))
    proc = stage(root, method, "toy", "--seed", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "artifacts" / "toy" / "baselines" / f"{method}-s0", proc.stdout + proc.stderr


@pytest.mark.parametrize("method", ["seeking", "laten"])
def test_two_processes_train_the_model_one_process_trains(params, tiny_root, tmp_path, method):
    """SEEKING: the sensitivity pass splits the seed examples and sums over the processes, then
    the LoRA training is data-parallel; LaTen: the locate step splits the extract examples, the
    hypernetworks train data-parallel and the validation losses that choose checkpoint and
    rate are computed on shares of the batches.
    Dropout off: its masks are drawn per process. Batches of 4: LaTen's 8 validation examples
    make two batches, one per process."""
    params["baselines"]["lora"]["dropout"] = 0.0
    params["baselines"][method]["train"]["batch_size"] = 4
    one, _ = _run(tiny_root, tmp_path, params, method, 1)
    two, log = _run(tiny_root, tmp_path, params, method, 2)
    assert "process 1 of 2" in log and "runs in one process" not in log

    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    r1, r2 = (json.loads((d / "log.json").read_text()) for d in (one, two))
    assert [e["loss"] for e in r2["train"]] == pytest.approx([e["loss"] for e in r1["train"]], rel=1e-4)
    if method == "seeking":
        assert r2["layer_scores"] == pytest.approx(r1["layer_scores"], rel=1e-5)  # every seed example counted once
        assert r2["source_layers"] == r1["source_layers"]
    else:
        assert r2["chosen"] == r1["chosen"] and r2["selection"] == r1["selection"] and r2["pairs"] == r1["pairs"]
        for model in ("source", "target"):  # the locate step's layer scores, split over the extract examples
            for kind in ("attn", "ffn"):
                assert r2["layer_importance"][model][kind] == \
                    pytest.approx(r1["layer_importance"][model][kind], abs=1e-6)  # float32 log-probs of ~10
        assert [row["val_loss"] for row in r2["validation"]] == \
            pytest.approx([row["val_loss"] for row in r1["validation"]], rel=1e-5)
        assert r2["target_val_loss"] == pytest.approx(r1["target_val_loss"], rel=1e-6)


@pytest.mark.parametrize("method", ["seeking", "laten"])
def test_source_model_baselines_compute_in_bfloat16(params, project, method):
    """A GPU placement computes in bfloat16 while trained tensors stay float32: the source's
    selected weights, SVD factors, hypernetworks and deltas cross that boundary (here on the CPU)."""
    params["baselines"][method]["train"]["max_steps"] = 2
    ctx = runner.make_context(params, method, "toy", 0, project)
    ctx.placement = Placement("cpu", "bfloat16", "float32", SINGLE)
    out = runner.output_dir(project, "toy", method, 0)
    runner.run(ctx, out)
    log = json.loads((out / "log.json").read_text())
    assert len(log["train"]) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in log["train"])
