"""Helpers shared by the tests that drive a tiny copy of the project with the real `dvc` CLI.

(A module of its own rather than conftest.py: tests/baselines has a conftest too, and two
modules named `conftest` cannot both be imported by name.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"^Running stage '([^']+)'", re.M)


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
    params["diagnostics"] = list(tasks)  # the curve and analysis stages run on the tiny pipeline
    params["tasks_config"] = {t: {"attribution": 3, "transfer": 6, "validation": 4, "evaluation": 4} for t in tasks}
    params["data"]["max_length"] = 48
    params["extract"].update(batch_size=4, top_k=16)
    params["fisher"]["top_k"] = 16
    params["frontier"].update(steps=3, batch_size=3, lr=1e-3)
    params["evaluation"].update(batch_size=4, benchmarks={"toy": {"max_new_tokens": 12}}, references=["source", "target"])
    return params


def set_param(root: Path, dotted: str, value) -> None:
    """One key of the project's params.yaml, as `dvc exp run -S` would set it."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    node = params
    *path, last = dotted.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def write_params(root: Path, params: dict, n_layers: int) -> None:
    """params.yaml plus the matching chain.yaml."""
    from pipeline.core.chain import rewrite

    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rewrite(root / "params.yaml", n_layers, root / "chain.yaml")


def sh(root: Path, env: dict, *cmd: str) -> str:
    out = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def repro(root: Path, env: dict, *args: str) -> set[str]:
    return set(RUNNING.findall(sh(root, env, "dvc", "repro", *args)))


PROJECT_FILES = ("pipeline", "stages", "scripts", "dvc.yaml", "params.yaml", "chain.yaml", ".gitignore",
                 "requirements-models.txt")


DVC_FILES = (".dvc/config", ".dvc/plots")  # copied after `dvc init`, which refuses an existing .dvc/


def make_project(root: Path, pair: tuple[Path, Path], env: dict) -> None:
    """A git + DVC repo at ``root`` holding a copy of the project, set to ``pair`` and the toy task."""
    root.mkdir()
    for item in PROJECT_FILES:
        src = ROOT / item
        if src.exists():
            (shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__"))
             if src.is_dir() else shutil.copy(src, root / item))
    write_params(root, tiny_params(*pair), n_layers=2)
    sh(root, env, "git", "init", "-q")
    sh(root, env, "dvc", "init", "-q")
    for item in DVC_FILES:
        src = ROOT / item
        (shutil.copytree(src, root / item) if src.is_dir() else shutil.copy(src, root / item))
    sh(root, env, "git", "add", "-A")
    sh(root, env, "git", "commit", "-qm", "init")
