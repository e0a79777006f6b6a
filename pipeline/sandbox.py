"""Running generated code, which we treat as hostile, without harming the evaluator or host.

Each program runs in its own process tree, started with ``start_new_session=True`` so the
whole group can be killed, with a scrubbed environment and a wall-clock timeout. Two
layers confine it:

**Kernel layer** (chosen by :func:`resolve_isolation`, recorded with every result):

* ``namespaces+nobody`` (evaluator runs as root): ``unshare`` gives the program new
  network (no interfaces but a down loopback), PID (it sees only itself; when the
  namespace's init exits, the kernel kills everything left), mount, IPC and UTS
  namespaces; private size-capped tmpfs mounts hide the host's world-writable ``/tmp``,
  ``/var/tmp``, ``/dev/shm`` and ``/run/lock``; then ``setpriv`` drops to uid/gid
  ``nobody`` with no capabilities (bounding set cleared) and ``no_new_privs``. The program
  can write only to those private tmpfs mounts, which vanish with it, and to files any
  user may write; it cannot see or signal host processes.
* ``user-namespaces`` (non-root evaluator): the same namespaces through a user namespace,
  capabilities dropped. The program keeps the evaluator's uid, so files of that user stay
  writable to native code: only the guard below stops Python-level writes there.
* ``process`` (no working ``unshare``): no kernel isolation beyond the limits below.

**Limits and guard** (always): ``resource`` limits set by the trusted runner before the
program is loaded (RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_CORE = 0);
stdout/stderr go to files, so RLIMIT_FSIZE also caps output (the program dies of SIGXFSZ);
and the audit-hook guard of :mod:`pipeline.sandbox_guard` (no sockets, no processes, no
signals to others, no writes outside the working directory, no ``/proc/<other pid>``).
RLIMIT_NPROC counts per uid and root ignores it, so under ``process`` as root only the
guard stops a fork bomb.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from pipeline.errors import PipelineError

ISOLATION_CHOICES = ("auto", "namespaces", "process")
MODES = ("namespaces+nobody", "user-namespaces", "process")
_PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable on most hosts
_GUARD_SOURCE = (Path(__file__).with_name("sandbox_guard.py")).read_text()
_PROBE = "import sys\nprint('sandbox-ok')\n"


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, whole process tree
    cpu_s: int = 10  # RLIMIT_CPU per process
    memory_mb: int = 1024  # RLIMIT_AS (address space)
    max_processes: int = 32  # RLIMIT_NPROC (counted per uid)
    max_file_mb: int = 16  # RLIMIT_FSIZE: any file written, stdout/stderr included
    tmpfs_mb: int = 64  # size of each private tmpfs (namespace modes)
    output_chars: int = 2000  # stdout/stderr kept in the record (head)


@dataclass
class RunResult:
    """The verdict on one program; ``passed`` means exit status 0 within the limits."""

    passed: bool
    status: str  # passed | failed | timeout | output_limit | killed
    reason: str
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str
    isolation: str = ""
    guard: bool = True

    def record(self) -> dict:
        return asdict(self)


def _which(name: str) -> str | None:
    return shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _wrapper(mode: str, limits: Limits) -> list[str]:
    """The argv prefix that puts the interpreter into its namespaces (empty for ``process``)."""
    if mode == "process":
        return []
    unshare, mount, setpriv = _which("unshare"), _which("mount"), _which("setpriv")
    if not (unshare and mount and setpriv):
        raise PipelineError("the sandbox needs unshare, mount and setpriv (util-linux)",
                            "install util-linux, or set evaluation.sandbox.isolation: process")
    tmpfs = f"size={limits.tmpfs_mb}m,mode=1777,nosuid,nodev"
    mounts = " && ".join(f"{{ [ ! -d {d} ] || {mount} -t tmpfs -o {tmpfs} sandbox {d}; }}" for d in _PRIVATE_DIRS)
    drop = [setpriv, "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
    ns = [unshare, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
    if mode == "namespaces+nobody":
        uid, gid = _nobody()
        drop[1:1] = [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    else:
        ns[1:1] = ["--user", "--map-root-user"]
    # sh stays the namespace's init (no exec): the program is then an ordinary process
    # that its own signals can kill, and when sh exits the kernel kills any leftovers.
    script = f"set -e; {mounts}; cd /tmp; set +e; " + " ".join(drop) + ' -- "$@"; exit $?'
    return ns + ["--", "/bin/sh", "-c", script, "sandbox"]


def _describe_exit(rc: int, mode: str) -> tuple[str, str, int | None]:
    """(status, reason, signal) from an exit status; sh reports a signal as 128 + n."""
    sig = -rc if rc < 0 else (rc - 128 if mode != "process" and 128 < rc < 160 else None)
    if sig == signal.SIGXFSZ:
        return "output_limit", "file/output size limit exceeded (SIGXFSZ)", sig
    if sig == signal.SIGXCPU:
        return "timeout", "CPU time limit exceeded (SIGXCPU)", sig
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "killed", f"killed by {name}", sig
    return "failed", f"exit status {rc}", None


def _last_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _read_head(path: Path, limit: int) -> tuple[str, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(limit)
    return head.decode("utf-8", errors="replace"), size


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Sandbox:
    """Runs Python programs under the isolation described in the module docstring."""

    limits: Limits = field(default_factory=Limits)
    isolation: str = "auto"
    python: str | None = None  # interpreter for the programs; default: this one
    guard: bool = True  # the audit-hook layer (tests switch it off to test the kernel alone)
    mode: str = field(init=False, default="")
    fallback_note: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATION_CHOICES + MODES:
            raise PipelineError(f"unknown sandbox isolation {self.isolation!r}",
                                f"set evaluation.sandbox.isolation to one of {ISOLATION_CHOICES}")
        self.python = self.python or sys.executable
        self.mode, self.fallback_note = resolve_isolation(self.isolation, self)

    def describe(self) -> dict:
        return {"isolation": self.mode, "guard": self.guard, "fallback_note": self.fallback_note,
                "limits": asdict(self.limits), "python": Path(self.python).name}

    def command(self, mode: str | None = None) -> list[str]:
        mode = mode or self.mode
        cfg = json.dumps({"cpu_s": self.limits.cpu_s, "memory_mb": self.limits.memory_mb,
                          "max_processes": self.limits.max_processes,
                          "max_file_mb": self.limits.max_file_mb})
        runner = _LIMITS_PRELUDE + _GUARD_SOURCE
        return _wrapper(mode, self.limits) + [self.python, "-I", "-S", "-B", "-c", runner,
                                              "1" if self.guard else "0", cfg]

    def run(self, program: str, mode: str | None = None) -> RunResult:
        """Run one program; never raises for anything the program does."""
        mode = mode or self.mode
        scratch = Path(tempfile.mkdtemp(prefix="semalign-sbx-"))  # 0700: the program can't reach it
        workdir = scratch / "work"
        workdir.mkdir()
        try:
            (scratch / "program.py").write_text(program)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
            home = "/tmp" if mode != "process" else str(workdir)
            env.update(HOME=home, TMPDIR=home)
            start = time.monotonic()
            with open(scratch / "program.py", "rb") as fin, open(scratch / "stdout", "wb") as fout, \
                    open(scratch / "stderr", "wb") as ferr:
                proc = subprocess.Popen(self.command(mode), stdin=fin, stdout=fout, stderr=ferr, env=env,
                                        cwd=workdir, start_new_session=True, close_fds=True)
                timed_out = False
                try:
                    rc = proc.wait(timeout=self.limits.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _kill_group(proc.pid)
                    rc = proc.wait()
                finally:
                    _kill_group(proc.pid)  # stragglers that kept the group (process mode)
            seconds = time.monotonic() - start
            stdout, out_size = _read_head(scratch / "stdout", self.limits.output_chars)
            stderr, err_size = _read_head(scratch / "stderr", self.limits.output_chars)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if timed_out:
            status, reason = "timeout", f"wall-clock timeout after {self.limits.timeout_s:g} s"
        elif rc == 0:
            status, reason = "passed", "passed"
        else:
            status, reason, _ = _describe_exit(rc, mode)
            if status == "failed" and _last_error_line(stderr):
                reason = _last_error_line(stderr)
        if status != "output_limit" and max(out_size, err_size) >= self.limits.max_file_mb * 2**20:
            status, reason = "output_limit", "output size limit reached"
        return RunResult(status == "passed", status, reason, rc, round(seconds, 3), stdout, stderr,
                         isolation=mode, guard=self.guard)

    def run_many(self, programs: Iterable[str], workers: int = 1) -> list[RunResult]:
        """Run programs concurrently (each still alone in its sandbox); order preserved."""
        programs = list(programs)
        if workers <= 1:
            return [self.run(p) for p in programs]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.run, programs))


# Trusted code run first in the child: lower the limits before the program is even read.
_LIMITS_PRELUDE = '''
import json as _json, resource as _resource, sys as _sys
_cfg = _json.loads(_sys.argv[2])
for _name, _value in ((_resource.RLIMIT_CPU, _cfg["cpu_s"]),
                      (_resource.RLIMIT_AS, _cfg["memory_mb"] * 2**20),
                      (_resource.RLIMIT_NPROC, _cfg["max_processes"]),
                      (_resource.RLIMIT_FSIZE, _cfg["max_file_mb"] * 2**20),
                      (_resource.RLIMIT_CORE, 0)):
    _resource.setrlimit(_name, (_value, _value))
del _sys.argv[2], _json, _resource, _cfg, _name, _value
'''


def _candidates(requested: str) -> list[str]:
    if requested in MODES:
        return [requested]
    ns = "namespaces+nobody" if os.geteuid() == 0 else "user-namespaces"
    if requested == "namespaces":
        return [ns]
    return [ns, "process"]


def resolve_isolation(requested: str, sandbox: Sandbox) -> tuple[str, str]:
    """The strongest mode whose probe program runs here; (mode, note on any fallback)."""
    failures = []
    for mode in _candidates(requested):
        try:
            result = sandbox.run(_PROBE, mode=mode)
        except PipelineError as exc:
            failures.append(f"{mode}: {exc.problem}")
            continue
        if result.passed and "sandbox-ok" in result.stdout:
            note = "; ".join(failures)
            return mode, (f"fell back to {mode} because " + note) if note else ""
        failures.append(f"{mode}: {result.reason} {result.stderr.strip()[-300:]}")
    raise PipelineError(
        "the code sandbox cannot run Python here: " + "; ".join(failures),
        "check that util-linux (unshare, setpriv) works and that the sandbox user can execute "
        "the interpreter (set evaluation.sandbox.python), or set evaluation.sandbox.isolation: process",
    )
