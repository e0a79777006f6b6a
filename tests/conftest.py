"""Shared fixtures: tiny model pairs and a tiny copy of the whole DVC project."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"^Running stage '([^']+)'", re.M)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Qwen2 source (6 x 64, 4 heads of 16) and target (4 x 48, 2 heads of 24)."""
    from pipeline.tiny import write_pair

    return write_pair(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_llama_pair(tmp_path_factory) -> tuple[Path, Path]:
    from pipeline.tiny import write_pair

    return write_pair(tmp_path_factory.mktemp("tiny_llama"), "llama", seed=3)


def dvc_env(tmp: Path) -> dict[str, str]:
    return dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp / "dvc-site"),
                GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
                GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid",
                TQDM_DISABLE="1", PYTHONPATH="",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def tiny_params(source: Path, target: Path, tasks=("toy",)) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"] = {"source": str(source), "target": str(target), "dtype": "float32"}
    params["tasks"] = list(tasks)
    params["tasks_config"] = {t: {"attribution": 3, "transfer": 6, "validation": 4, "evaluation": 4} for t in tasks}
    params["data"]["max_length"] = 48
    params["extract"].update(batch_size=4, top_k=16)
    params["fisher"]["top_k"] = 16
    params["frontier"].update(steps=3, batch_size=3, lr=1e-3)
    return params


def write_params(root: Path, params: dict, n_layers: int) -> None:
    """params.yaml plus the matching chain.yaml."""
    from pipeline.chain import rewrite

    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rewrite(root / "params.yaml", n_layers, root / "chain.yaml")


def sh(root: Path, env: dict, *cmd: str) -> str:
    out = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def repro(root: Path, env: dict, *args: str) -> set[str]:
    return set(RUNNING.findall(sh(root, env, "dvc", "repro", *args)))


@pytest.fixture(scope="session")
def shallow_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The smallest pair that still differs in every dimension: 3 -> 2 blocks (fast DVC tests)."""
    from pipeline.tiny import write_pair

    return write_pair(tmp_path_factory.mktemp("tiny_shallow"), "qwen2", seed=5,
                      source_shape=(3, 32, 2, 1), target_shape=(2, 24, 2, 1))


@pytest.fixture
def tiny_project(tmp_path, shallow_pair):
    """A git + DVC repo holding a copy of the project, set to the shallow pair and the toy task."""
    root = tmp_path / "proj"
    root.mkdir()
    for item in ("pipeline", "stages", "dvc.yaml", "params.yaml", "chain.yaml", ".gitignore"):
        src = ROOT / item
        (shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy(src, root / item))
    write_params(root, tiny_params(*shallow_pair), n_layers=2)
    env = dvc_env(tmp_path)
    sh(root, env, "git", "init", "-q")
    sh(root, env, "dvc", "init", "-q")
    shutil.copy(ROOT / ".dvc/config", root / ".dvc/config")  # after init: `dvc init` refuses an existing .dvc/
    sh(root, env, "git", "add", "-A")
    sh(root, env, "git", "commit", "-qm", "init")
    return root, env
