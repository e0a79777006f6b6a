"""Hostile programs against the code sandbox, under each layer it claims.

* ``default``: what the evaluator uses (strongest kernel mode available + guard).
* ``kernel``: namespaces (and uid nobody when root) with the Python guard switched off,
  so the kernel layer is tested on its own; skipped where unshare does not work.
* ``guard``: no kernel isolation, only limits + the audit-hook guard (the fallback).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.sandbox import Limits, Sandbox

FAST = Limits(timeout_s=2.0, cpu_s=2, memory_mb=256, max_file_mb=1, tmpfs_mb=8, output_chars=500)
SETTINGS = {"default": dict(isolation="auto", guard=True),
            "kernel": dict(isolation="namespaces", guard=False),
            "guard": dict(isolation="process", guard=True)}
# What the kernel layer alone promises in the non-root mode: everything but the evaluator
# user's own files (the guard covers those). Not run as root: there the user namespace maps
# to real root, which ignores RLIMIT_NPROC, so a fork bomb would meet no limit.
if os.geteuid() != 0:
    SETTINGS["userns-kernel"] = dict(isolation="user-namespaces", guard=False)


@pytest.fixture(scope="module", params=list(SETTINGS))
def box(request) -> Sandbox:
    try:
        return Sandbox(FAST, **SETTINGS[request.param])
    except PipelineError as exc:
        pytest.skip(f"{request.param} isolation unavailable here: {exc.problem}")


def _run(box: Sandbox, program: str):
    start = time.monotonic()
    result = box.run(program)
    elapsed = time.monotonic() - start
    assert elapsed < 8, f"hostile program stalled the evaluator for {elapsed:.1f}s"
    return result


def _sandbox_processes() -> list[str]:
    """Live processes started by a sandbox: their command line carries the runner prelude."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"_resource.RLIMIT_NPROC" in (entry / "cmdline").read_bytes():
                    found.append(entry.name)
            except OSError:
                continue
    return found


def test_correct_solution_passes_and_wrong_one_fails(box):
    tests = "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n\ncheck(add)\n"
    assert _run(box, "def add(a, b):\n    return a + b\n\n" + tests).passed
    wrong = _run(box, "def add(a, b):\n    return a - b\n\n" + tests)
    assert not wrong.passed and wrong.status == "failed" and "AssertionError" in wrong.reason


def test_infinite_loop_is_killed_at_the_timeout(box):
    result = _run(box, "while True:\n    pass\n")
    assert result.status == "timeout" and not result.passed


def test_fork_bomb_is_contained_and_leaves_nothing_behind(box):
    bomb = ("import os\n"
            "while True:\n"
            "    try:\n"
            "        if os.fork() == 0:\n"
            "            os.setsid()  # try to leave the process group the evaluator kills\n"
            "    except OSError:\n"
            "        pass\n")
    result = _run(box, bomb)
    assert not result.passed
    deadline = time.monotonic() + 3
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sandbox_processes() == []
    # The host can still start processes.
    assert subprocess.run(["true"]).returncode == 0


def test_memory_bomb_fails_fast(box):
    # bytes(n) is calloc'ed: the address space limit trips without paging memory in, so
    # the test stays fast on a loaded machine; a page-touching bomb trips the same limit.
    result = _run(box, "blocks = []\nwhile True:\n    blocks.append(bytes(64 * 2**20))\n")
    assert not result.passed and "MemoryError" in result.reason


def test_huge_output_is_capped(box):
    result = _run(box, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert result.status == "output_limit" and not result.passed
    assert len(result.stdout) <= FAST.output_chars


@pytest.fixture
def victims(tmp_path):
    """Files the program must not change: one in the test's tmp dir and, as root, one in a
    root-owned world-readable directory outside the private tmpfs mounts."""
    dirs = [tmp_path]
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        shared = Path(tempfile.mkdtemp(prefix="semalign-victim-", dir="/run"))
        shared.chmod(0o755)
        dirs.append(shared)
    files = []
    for d in dirs:
        f = d / "victim.txt"
        f.write_text("original")
        f.chmod(0o644)
        files.append(f)
    yield files
    for d in dirs[1:]:
        shutil.rmtree(d, ignore_errors=True)


def test_writes_and_deletes_outside_the_sandbox_fail(box, victims):
    if box.mode == "user-namespaces" and not box.guard:
        pytest.skip("user namespaces keep the evaluator's uid: only the guard protects its files")
    lines = ["import os, shutil"]
    for v in victims:
        for attempt in (f"open({str(v)!r}, 'w').write('pwned')",
                        f"os.remove({str(v)!r})",
                        f"open({str(v.parent / 'new.txt')!r}, 'w').write('x')",
                        f"os.rename({str(v)!r}, {str(v) + '.moved'!r})",
                        f"shutil.rmtree({str(v.parent)!r})"):
            lines.append(f"try:\n    {attempt}\n    print('DID', {attempt!r})\nexcept Exception as e:\n"
                         f"    print('refused', type(e).__name__)")
    lines.append("open('inside.txt', 'w').write('ok')\nprint('inside ok')")
    result = _run(box, "\n".join(lines) + "\n")
    assert "DID" not in result.stdout, result.stdout
    assert "inside ok" in result.stdout  # its own directory stays writable
    for v in victims:
        assert v.read_text() == "original"
        assert sorted(p.name for p in v.parent.iterdir()) == ["victim.txt"]


def test_private_tmp_does_not_reach_the_host(box):
    if box.mode == "process":
        pytest.skip("the process fallback has no private /tmp (the guard confines writes instead)")
    name = f"semalign-leak-{os.getpid()}"
    result = _run(box, f"open('/tmp/{name}', 'w').write('x')\nprint('written')\n")
    assert "written" in result.stdout
    assert not Path(tempfile.gettempdir(), name).exists() and not Path("/tmp", name).exists()


def test_network_connection_is_impossible(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    program = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
               "s.sendall(b'leak')\nprint('CONNECTED')\n")
    result = _run(box, program)
    server.settimeout(0.2)  # a connection that got through would wait in the backlog
    try:
        conn, _ = server.accept()
        conn.close()
        reached = True
    except OSError:
        reached = False
    server.close()
    assert not result.passed and "CONNECTED" not in result.stdout and not reached


def test_parent_environment_is_invisible(box, monkeypatch):
    secret = "s3cr3t-value-for-the-sandbox-test"
    monkeypatch.setenv("SEMALIGN_SECRET_TOKEN", secret)
    # /proc/<pid>/environ shows a process's environment as it was started, so also start a
    # process that really carries the secret there.
    holder = subprocess.Popen(["sleep", "30"], env=dict(os.environ))
    try:
        # Print only what matters, so the output cap cannot hide a leak.
        program = ("import os\nprint(sorted(os.environ))\n"
                   "print(os.environ.get('SEMALIGN_SECRET_TOKEN'))\n"
                   f"for pid in (os.getppid(), {os.getpid()}, {holder.pid}, 1):\n"
                   "    try:\n"
                   "        env = open(f'/proc/{pid}/environ', 'rb').read().split(b'\\0')\n"
                   "        print(pid, [e for e in env if e.startswith(b'SEMALIGN_SECRET_TOKEN')])\n"
                   "    except Exception as e:\n"
                   "        print('refused', pid, type(e).__name__)\n")
        result = _run(box, program)
    finally:
        holder.kill()
        holder.wait()
    assert "PATH" in result.stdout  # the program ran and printed its (scrubbed) environment
    assert secret not in result.stdout + result.stderr


def test_killing_the_parent_or_others_fails(box):
    victim = subprocess.Popen(["sleep", "30"])
    try:
        program = ("import os, signal\n"
                   f"for pid in (os.getppid(), {os.getpid()}, {victim.pid}, -1):\n"
                   "    try:\n"
                   "        os.kill(pid, signal.SIGKILL)\n"
                   "        print('signalled', pid)\n"
                   "    except Exception as e:\n"
                   "        print('refused', pid, type(e).__name__)\n")
        result = _run(box, program)
        assert victim.poll() is None, "the program killed a process outside its sandbox"
        assert f"signalled {victim.pid}" not in result.stdout
        assert f"signalled {os.getpid()}" not in result.stdout
    finally:
        victim.kill()
        victim.wait()
    # and the evaluator (this process) is evidently still here to run the next program
    assert _run(box, "print('next')\n").passed


def test_isolation_in_force_is_reported(box):
    info = box.describe()
    assert info["isolation"] in ("namespaces+nobody", "user-namespaces", "process")
    result = _run(box, "print('x')\n")
    assert result.isolation == box.mode and result.guard == box.guard


def test_unknown_isolation_is_a_user_error():
    with pytest.raises(PipelineError, match="isolation"):
        Sandbox(FAST, isolation="docker")


def test_sandbox_survives_a_program_that_kills_itself():
    result = Sandbox(FAST, isolation="auto").run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert result.status == "killed" and "SIGKILL" in result.reason
