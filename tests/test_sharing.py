"""Team sharing over a real network protocol: a DVC remote on a loopback SFTP server.

docs/sharing.md describes what this does: push data and run cache, clone, pull one
layer's activations alone, pull the rest, and `dvc repro` recomputes nothing.
"""

from __future__ import annotations

import json
import select
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from dvc_project import repro, sh

SERVER = Path(__file__).with_name("sftp_server.py")
LAYER = "artifacts/toy/source/transfer/layer_03.safetensors"
# one output of each kind a teammate should get back without recomputing
RESTORED = ("models/target/config.json", "artifacts/toy/source/transfer/layer_02.safetensors",
            "artifacts/toy/fisher/layer_01.safetensors", "artifacts/toy/frontier/s0/toy-s0-L01/block.safetensors",
            "dvclive/toy/frontier/s0/toy-s0-L01/plots/metrics/loss.tsv", "artifacts/toy/model-s0/config.json",
            "metrics/quality/toy-s0.json", "plots/analysis/cka_heatmap/toy-s0.png")


@pytest.fixture
def sftp_server(tmp_path):
    """(port, client key, served root) of an SFTP server on 127.0.0.1, stopped by PID afterwards."""
    keys, served = tmp_path / "keys", tmp_path / "served"
    keys.mkdir()
    served.mkdir()
    proc = subprocess.Popen([sys.executable, str(SERVER), str(keys), str(served)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            proc.kill()
            raise AssertionError(f"SFTP server did not start: {line!r} {proc.stderr.read()}")
        yield int(line.split()[1]), keys / "client_key", served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def set_credentials(root: Path, env: dict, key: Path) -> None:
    """What each teammate does once: their own user and key, in the uncommitted config.local."""
    sh(root, env, "dvc", "remote", "modify", "--local", "team", "user", "tester")
    sh(root, env, "dvc", "remote", "modify", "--local", "team", "keyfile", str(key))


def is_linked_read_only(path: Path) -> bool:
    st = path.stat()
    return st.st_nlink >= 2 and not stat.S_IMODE(st.st_mode) & 0o222


def test_push_clone_pull_one_layer_then_everything_without_recomputing(reproduced_project, sftp_server, tmp_path):
    root, env, _ = reproduced_project
    port, key, served = sftp_server
    # large outputs are hard links into the cache (cache.type in .dvc/config), not copies
    assert is_linked_read_only(root / LAYER)

    sh(root, env, "dvc", "remote", "add", "-d", "-f", "team", f"ssh://127.0.0.1:{port}/store")
    set_credentials(root, env, key)
    sh(root, env, "git", "commit", "-qm", "team remote", ".dvc/config")
    out = sh(root, env, "dvc", "push", "--run-cache")
    assert "files pushed" in out
    assert any((served / "store" / "files" / "md5").iterdir())
    assert any((served / "store" / "runs").rglob("*"))  # run cache entries went too

    clone = tmp_path / "clone"
    sh(tmp_path, env, "git", "clone", "-q", str(root), str(clone))
    set_credentials(clone, env, key)

    # one layer's activations alone: a file inside a tracked directory
    sh(clone, env, "dvc", "pull", LAYER)
    assert (clone / LAYER).read_bytes() == (root / LAYER).read_bytes()
    transfer = clone / "artifacts/toy/source/transfer"
    assert sorted(p.name for p in transfer.iterdir()) == ["layer_03.safetensors"]
    assert not (clone / "artifacts/toy/model-s0").exists()

    sh(clone, env, "dvc", "pull")
    for rel in RESTORED:
        assert (clone / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert is_linked_read_only(clone / LAYER)
    assert repro(clone, env) == set()
    assert json.loads(sh(clone, env, "dvc", "status", "--json")) == {}
