"""The compute setting: one block decides device, dtype and processes; bad values and missing
GPUs fail before any model loads; the GPU placement code runs here on the meta device or with
torch.cuda's answers replaced (these machines have no GPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from pipeline.compute import placement as compute
from pipeline.core.adapter import input_device
from pipeline.compute.placement import MOVED, ComputeSettings, Placement, device_map, load_kwargs, meta_model, settings
from pipeline.core.errors import PipelineError
from pipeline.compute.parallel import SINGLE, Shard
from pipeline.compute.sizes import ModelShape
from dvc_project import ROOT


def test_defaults_and_one_dtype_for_every_device():
    assert settings({}) == ComputeSettings()
    s = settings({"compute": {"device": "cuda:1", "dtype": "float16", "processes": 1}})
    assert s.device == "cuda:1" and s.dtype == {"cuda": "float16", "cpu": "float16"}
    assert settings({"compute": {"dtype": {"cpu": "bfloat16"}}}).dtype == {"cuda": "bfloat16", "cpu": "bfloat16"}


@pytest.mark.parametrize("block, words", [
    ({"device": "gpu"}, "compute.device"),
    ({"device": "cuda:x"}, "compute.device"),
    ({"dtype": "fp8"}, "compute.dtype.cuda"),
    ({"dtype": {"tpu": "bfloat16"}}, "compute.dtype"),
    ({"train_dtype": "auto"}, "compute.train_dtype"),
    ({"processes": 0}, "compute.processes"),
    ({"processes": "2"}, "compute.processes"),
    ({"gpu_reserve": 1.5}, "compute.gpu_reserve"),
    ({"device": "cuda:0", "processes": 2}, "names one GPU"),
    ({"devices": "cpu"}, "unknown compute settings"),
])
def test_bad_values_fail_with_problem_and_fix(block, words):
    with pytest.raises(PipelineError, match=words) as err:
        settings({"compute": block})
    assert err.value.fix


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_keys_name_the_new_one(old, new):
    block, key = old
    with pytest.raises(PipelineError) as err:
        settings({block: {key: "float32"}})
    assert f"{block}.{key}" in err.value.problem and new in err.value.problem


def test_device_resolution_without_and_with_gpus():
    assert compute.resolve_device("auto", n_cuda=0) == "cpu"
    assert compute.resolve_device("cpu", n_cuda=4) == "cpu"
    assert compute.resolve_device("auto", local_rank=1, n_cuda=2) == "cuda:1"  # process i uses GPU i
    assert compute.resolve_device("cuda:1", n_cuda=2) == "cuda:1"
    with pytest.raises(PipelineError, match="no CUDA device"):
        compute.resolve_device("cuda", n_cuda=0)
    with pytest.raises(PipelineError, match="needs GPU 3, but this machine has 2"):
        compute.resolve_device("cuda:3", n_cuda=2)
    with pytest.raises(PipelineError, match="needs GPU 2"):
        compute.resolve_device("cuda", local_rank=2, n_cuda=2)  # more processes than GPUs


def _fake_gpus(monkeypatch, count: int, free_bytes: int, bf16: bool = True) -> None:
    """torch.cuda as a machine with ``count`` GPUs of ``free_bytes`` free memory would answer."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (free_bytes, free_bytes))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)


def test_place_on_a_gpu_machine_picks_the_gpu_and_its_dtype(monkeypatch):
    _fake_gpus(monkeypatch, 2, 10 * 2**30)
    p = compute.place({"compute": {"device": "auto"}}, "test")
    assert (p.device, p.dtype, p.train_dtype, p.shard) == ("cuda:0", "bfloat16", "float32", SINGLE)
    p = compute.place({"compute": {"dtype": {"cuda": "auto"}}}, "test")
    assert p.dtype == "bfloat16"
    _fake_gpus(monkeypatch, 2, 10 * 2**30, bf16=False)
    assert compute.place({"compute": {"dtype": {"cuda": "auto"}}}, "test").dtype == "float32"  # e.g. a V100
    cpu_stage = compute.place({}, "test", uses_device=False, why_cpu="it copies weights")
    assert (cpu_stage.device, cpu_stage.dtype) == ("cpu", "float32")


def test_cpu_dtype_auto_follows_the_bf16_units(monkeypatch):
    s = settings({"compute": {"dtype": {"cpu": "auto"}}})
    monkeypatch.setattr(compute, "cpu_has_bf16", lambda: False)
    assert compute.resolve_dtype(s, "cpu") == "float32"
    monkeypatch.setattr(compute, "cpu_has_bf16", lambda: True)
    assert compute.resolve_dtype(s, "cpu") == "bfloat16"
    assert compute.resolve_dtype(settings({}), "cpu") == "float32"  # the default names float32


def test_cuda_without_cuda_fails_at_once_in_the_stage(tmp_path, monkeypatch, capsys):
    """The extract stage with compute.device: cuda on this machine: exit status 2, a clear
    message, and no model or tokenizer is touched."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "tasks": ["toy"], "compute": {"device": "cuda"}, "extract": {"batch_size": 1, "top_k": 4},
        "data": {"max_length": 32}}))
    monkeypatch.setattr("pipeline.core.loading.load_model", lambda *a, **k: pytest.fail("model loaded before the check"))
    monkeypatch.setattr("pipeline.core.loading.load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded first"))
    monkeypatch.setattr(sys, "argv", ["extract", "toy"])
    from pipeline.core.runner import guarded
    from stages import extract

    assert guarded("extract@toy", extract.main) == 2
    err = capsys.readouterr().err
    assert "compute.device is cuda, but this machine has no CUDA device" in err and "fix:" in err


def test_cuda_without_cuda_from_the_command_line(tmp_path):
    """The same through the stage's own command (its launcher reads the params first)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"], params["compute"]["device"] = ["toy"], "cuda"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, "-m", "stages.attribute", "toy"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stderr
    assert "no CUDA device" in out.stderr and "Traceback" not in out.stderr


def test_a_bad_processes_value_fails_before_any_process_starts(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tasks": ["toy"], "compute": {"processes": -1}}))
    out = subprocess.run([sys.executable, "-m", "stages.extract", "toy"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and "compute.processes is -1" in out.stderr, out.stderr


# --- placing weights: the device map, computed on the meta device ------------------------------------
def test_device_map_spreads_whole_blocks_over_gpus_then_cpu(tiny_pair):
    source = tiny_pair[0]
    shape = ModelShape.from_dir(source)
    block = shape.block_parameters * 4
    model = meta_model(source, "float32")
    assert all(p.device.type == "meta" for p in model.parameters())
    head = shape.vocab * shape.width * 4
    layout = device_map(model, {0: head + int(2.5 * block), 1: int(2.5 * block)}, cpu_bytes=2**30)
    blocks = {k: v for k, v in layout.items() if ".layers." in k}
    assert list(blocks) == [f"model.layers.{i}" for i in range(shape.layers)]  # whole blocks, never split
    used = list(dict.fromkeys(layout.values()))
    assert used[:2] == [0, 1] and "cpu" in used  # GPU 0, then GPU 1, then CPU offload as the last resort
    order = [{0: 0, 1: 1, "cpu": 2}[blocks[f"model.layers.{i}"]] for i in range(shape.layers)]
    assert order == sorted(order)  # consecutive blocks stay together


def _gpu_placement(world: int = 1) -> Placement:
    return Placement("cuda:0", "bfloat16", "float32", Shard(0, world) if world > 1 else SINGLE, 0.0)


def test_load_kwargs_on_a_gpu_that_fits_and_one_that_does_not(tiny_pair, monkeypatch):
    source = tiny_pair[0]
    need = ModelShape.from_dir(source).parameters * 2  # bfloat16
    assert load_kwargs(Placement("cpu", "float32", "float32", SINGLE), source) == {}
    _fake_gpus(monkeypatch, 2, need + 1)
    assert load_kwargs(_gpu_placement(), source, spread=True) == {"device_map": {"": "cuda:0"}}
    _fake_gpus(monkeypatch, 2, need // 3)
    spread = load_kwargs(_gpu_placement(), source, spread=True)
    assert set(spread["device_map"].values()) >= {0, 1} and spread["offload_folder"]
    with pytest.raises(PipelineError, match="more than cuda:0 has free"):
        load_kwargs(_gpu_placement(), source, spread=False)  # a target or trained model is never spread
    with pytest.raises(PipelineError, match="compute.processes: 1"):
        load_kwargs(_gpu_placement(world=2), source, spread=True)  # a data-parallel process holds a whole copy


def test_frontier_loads_only_its_block_onto_the_device(tiny_pair):
    from pipeline.core.adapter import ModelAdapter
    from pipeline.core.loading import load_model_blocks

    adapter = ModelAdapter(load_model_blocks(tiny_pair[1], "float32", 2, 2, device="cpu"))
    assert next(adapter.block(2).parameters()).device.type == "cpu"
    assert next(adapter.block(1).parameters()).device.type == "meta"
    rotary = getattr(adapter.backbone, adapter.spec.rotary)
    assert all(b.device.type == "cpu" for b in rotary.buffers())


def test_input_device_of_a_spread_model_is_its_first_gpu():
    class Spread(torch.nn.Module):
        hf_device_map = {"model.embed_tokens": "cpu", "model.layers.0": 1, "lm_head": "disk"}

    assert input_device(Spread()) == torch.device("cuda:1")
    Spread.hf_device_map = {"model.embed_tokens": "cpu"}
    assert input_device(Spread()) == torch.device("cpu")
