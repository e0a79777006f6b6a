"""Shared fixtures: tiny model pairs and a tiny copy of the whole DVC project."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dvc_project import ROOT, dvc_env, make_project, repro, sh  # noqa: F401  (re-exported)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Qwen2 source (6 x 64, 4 heads of 16) and target (4 x 48, 2 heads of 24)."""
    from pipeline.core.tiny import write_pair

    return write_pair(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_llama_pair(tmp_path_factory) -> tuple[Path, Path]:
    from pipeline.core.tiny import write_pair

    return write_pair(tmp_path_factory.mktemp("tiny_llama"), "llama", seed=3)


@pytest.fixture(scope="session")
def shallow_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The smallest pair that still differs in every dimension: 3 -> 2 blocks (fast DVC tests)."""
    from pipeline.core.tiny import write_pair

    return write_pair(tmp_path_factory.mktemp("tiny_shallow"), "qwen2", seed=5,
                      source_shape=(3, 32, 2, 1), target_shape=(2, 24, 2, 1))


@pytest.fixture
def tiny_project(tmp_path, shallow_pair):
    """A git + DVC repo holding a copy of the project, set to the shallow pair and the toy task."""
    env = dvc_env(tmp_path)
    make_project(tmp_path / "proj", shallow_pair, env)
    return tmp_path / "proj", env


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory, shallow_pair):
    """The tiny project after one full `dvc repro`, dvc.lock committed: (root, env, stages that ran).

    Shared by the sharing, experiment and analysis tests (a full run costs minutes on a loaded
    2-core machine); they only add commits, experiments and remotes, never change params.
    """
    tmp = tmp_path_factory.mktemp("reproduced")
    env = dvc_env(tmp)
    root = tmp / "proj"
    make_project(root, shallow_pair, env)
    ran = repro(root, env)
    sh(root, env, "git", "add", "-A")
    sh(root, env, "git", "commit", "-qm", "reproduce")
    return root, env, ran


@pytest.fixture
def reproduced_copy(reproduced_project, tmp_path):
    """A private copy of the reproduced project, free to change params and rerun: (root, env, stages
    the first run ran). Copying costs a second; a fresh full run costs minutes."""
    src, _, ran = reproduced_project
    root = tmp_path / "proj"
    shutil.copytree(src, root, symlinks=True,  # not .dvc/tmp: other tests' queue state and locks
                    ignore=lambda d, names: ["tmp"] if Path(d) == src / ".dvc" else [])
    return root, dvc_env(tmp_path), ran
