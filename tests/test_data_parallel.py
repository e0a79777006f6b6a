"""Data parallelism on the CPU (gloo), through the launcher the stage commands use: artifacts of a
two-process run equal the one-process ones (inference stages: bit for bit; trained blocks:
within float tolerance), and a DDP step's gradients equal the one-process step's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from dvc_project import ROOT, sh
from safetensors.torch import load_file

from pipeline.compute.parallel import SINGLE, Shard, shared_dir

TESTS = Path(__file__).resolve().parent


def test_one_process_helpers_are_the_identity(tmp_path):
    assert SINGLE.mine("abc") == [(0, "a"), (1, "b"), (2, "c")]
    assert Shard(1, 3).mine(list(range(7))) == [(1, 1), (4, 4)]  # round robin over whole batches
    assert SINGLE.gather([(2, "c"), (0, "a"), (1, "b")]) == ["a", "b", "c"]  # batch order, not arrival order
    with shared_dir(tmp_path / "out", SINGLE) as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "out" / "f").read_text() == "x" and len(list(tmp_path.iterdir())) == 1


def test_a_ddp_step_equals_the_single_process_step(tmp_path, tiny_pair):
    """Two processes started by the stages' launcher: the frontier block's gradient under DDP (each
    process runs its share of the batch) and one SFT step (the baselines' loop) against the
    one-process step each process computes on the same global batch."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"compute": {"processes": 2}}))
    out = tmp_path / "found.json"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{TESTS}", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", "ddp_worker", str(tiny_pair[1]), str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["world"] == 2
    assert found["frontier_max_relative_grad_diff"] < 1e-5
    assert found["frontier_loss"] == pytest.approx(found["frontier_reference_loss"], rel=1e-6)
    single, parallel = found["sft_single"], found["sft_parallel"]
    assert parallel["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert parallel["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)


def _tensors(root: Path, sub: str) -> dict[str, dict[str, torch.Tensor]]:
    return {str(f.relative_to(root)): load_file(f) for f in sorted((root / sub).rglob("*.safetensors"))}


def _assert_tensors(one: Path, two: Path, sub: str, exact: bool) -> None:
    a, b = _tensors(one, sub), _tensors(two, sub)
    assert a and a.keys() == b.keys(), sub
    for name in a:
        for key, t in a[name].items():
            if exact:
                assert torch.equal(t, b[name][key]), f"{name}:{key}"
            else:
                torch.testing.assert_close(b[name][key], t, rtol=1e-4, atol=1e-5, msg=f"{name}:{key}")


def test_tiny_pipeline_with_two_processes_equals_one(reproduced_project, reproduced_copy):
    """`dvc repro` of the tiny pipeline with compute.processes: 2 (every stage again, each through
    its own launcher) passes, and writes what the one-process run wrote."""
    one = reproduced_project[0]
    root, env, _ = reproduced_copy
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["compute"]["processes"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = sh(root, env, "dvc", "repro", "--force")
    assert "compute: cpu, float32, process 1 of 2" in log  # the data-parallel stages ran in two processes
    assert "runs in one process" in log  # and the ones whose work does not split said so

    art = Path("artifacts") / "toy"
    # Inference stages: every batch computed as one process computes it, gathered in batch order.
    _assert_tensors(one, root, str(art / "source"), exact=True)  # extraction
    assert json.loads((one / art / "attribution.json").read_text()) == \
        json.loads((root / art / "attribution.json").read_text())
    _assert_tensors(one, root, str(art / "fisher"), exact=True)
    for model in ("source", "target"):  # evaluation of the untouched models: same samples, same metrics
        assert (one / "metrics/eval" / model / "toy.json").read_text() == \
            (root / "metrics/eval" / model / "toy.json").read_text()
        assert (one / "artifacts/eval" / model / "toy/samples.jsonl").read_text() == \
            (root / "artifacts/eval" / model / "toy/samples.jsonl").read_text()
    # Held-out agreement per example (each batch scored on its own, gathered in batch order): the
    # untouched target's bit for bit (SemAlign's below, with the trained blocks).
    assert (one / "artifacts/heldout/target/toy.json").read_text() == \
        (root / "artifacts/heldout/target/toy.json").read_text()
    # Training: DDP on the same global batches, equal within float tolerance.
    _assert_tensors(one, root, str(art / "frontier"), exact=False)
    _assert_tensors(one, root, str(art / "model-s0"), exact=False)
    h1, h2 = (json.loads((r / "artifacts/heldout/semalign-s0/toy.json").read_text()) for r in (one, root))
    assert h1["ids"] == h2["ids"] and h1["positions"] == h2["positions"]
    assert h2["kl"] == pytest.approx(h1["kl"], rel=1e-4, abs=1e-6)
    q1, q2 = (json.loads((r / "metrics/quality/toy-s0.json").read_text()) for r in (one, root))
    assert q1.keys() == q2.keys() and all(q2[k] == pytest.approx(q1[k], rel=1e-4, abs=1e-6) for k in q1)
    a1, a2 = (json.loads((r / "metrics/analysis/toy-s0.json").read_text()) for r in (one, root))
    assert all(a2[k] == pytest.approx(a1[k], rel=1e-4, abs=1e-6) for k in a1)
    assert (root / "metrics/results.md").is_file()
