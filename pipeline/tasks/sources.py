"""Where benchmark source files come from: installed packages' data files and cached archives.

Data is read as *files*, never by importing the package that ships them: several of these
packages are anonymous uploads, and importing runs their code (and pulls their
dependencies). Every reader checks the pinned version first, so a missing or different
package fails with the install command before any work starts.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata as md
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError

SETUP_HINT = "bash scripts/setup_assets.sh"


def install_command(name: str, version: str, no_deps: bool = False) -> str:
    flag = "--no-deps " if no_deps else ""
    return f"pip install {flag}{name}=={version}"


def is_installed(name: str) -> bool:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True


def package_file(name: str, version: str, relpath: str, no_deps: bool = False) -> Path:
    """The path of a data file shipped by an installed distribution, version-checked."""
    fix = f"{install_command(name, version, no_deps)} (or run {SETUP_HINT})"
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        raise PipelineError(f"package {name}=={version} is not installed", fix) from None
    if dist.version != version:
        # A different release may ship different rows, which would silently change the splits.
        raise PipelineError(f"package {name} is version {dist.version}, the pipeline pins {version}", fix)
    path = Path(dist.locate_file(relpath))
    if not path.is_file():
        raise PipelineError(f"{name}=={version} is installed but {relpath} is missing from it", f"reinstall: {fix}")
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """JSON lines from a plain or gzipped file (blank lines skipped)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cached_archive(cache_dir: str | os.PathLike, filename: str, sha256: str) -> Path:
    """A downloaded archive in the cache dir, present and with the pinned hash."""
    path = Path(cache_dir) / filename
    if not path.is_file():
        raise PipelineError(f"{path} is missing (it is downloaded, not installed)", f"run {SETUP_HINT}")
    digest = sha256_file(path)
    if digest != sha256:
        raise PipelineError(f"{path} has sha256 {digest}, expected {sha256}",
                            f"delete it and run {SETUP_HINT} again")
    return path


def read_from_tar(archive: str | os.PathLike, member: str) -> bytes:
    """One member's bytes, read straight out of a tar.gz: nothing is extracted or run."""
    with tarfile.open(archive, "r:gz") as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise PipelineError(f"{archive} has no member {member}", f"delete it and run {SETUP_HINT} again") from None
        f = tar.extractfile(info)
        if f is None:
            raise PipelineError(f"{member} in {archive} is not a regular file", f"delete it and run {SETUP_HINT} again")
        return f.read()
