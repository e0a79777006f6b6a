"""Artifact I/O: safetensors for tensors, JSON for small records, written atomically.

Every writer goes through :func:`atomic_path`: the data lands under a temporary name in
the destination directory and is renamed into place only when complete, so a crash never
leaves a file that a later stage would accept.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # torch is imported where tensors are written: the JSON-only stages never pay for it
    import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp/mkdtemp (and some writers) leave owner-only entries: use the umask's mode
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod((0o777 if is_dir else 0o666) & ~umask)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write tensors (made contiguous) as one safetensors file; metadata values as JSON."""
    from safetensors.torch import save_file

    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)


def load_tensors(path: str | os.PathLike, producer: str = "the stage that writes it") -> dict[str, torch.Tensor]:
    """Read a safetensors artifact, with a clear error if it is missing or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"artifact {p} is missing", f"run {producer} first (`dvc repro` does)")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PipelineError(
            f"artifact {p} is corrupt or not a safetensors file ({exc})",
            f"delete it and re-run {producer} (`dvc repro --force <stage>`)",
        ) from exc


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata stored in a safetensors header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def write_json(path: str | os.PathLike, record: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, producer: str = "the stage that writes it") -> Any:
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"artifact {p} is missing", f"run {producer} first (`dvc repro` does)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(
            f"artifact {p} is not valid JSON ({exc})",
            f"delete it and re-run {producer} (`dvc repro --force <stage>`)",
        ) from exc


def check_finite(name: str, value: torch.Tensor | float, where: str) -> None:
    """Stop on NaN/Inf with a message that says where and what to try."""
    import torch

    bad = not math.isfinite(float(value)) if not torch.is_tensor(value) else not torch.isfinite(value).all()
    if bad:
        raise PipelineError(
            f"{name} became NaN or Inf in {where}",
            "lower the learning rate, enable gradient clipping (frontier.grad_clip), "
            "or train in float32 (compute.train_dtype: float32)",
        )
