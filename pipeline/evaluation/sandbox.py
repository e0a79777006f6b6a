"""Running generated code, which we treat as hostile, without harming the evaluator or host,
and judging it by its tests in a way it cannot forge.

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

In both namespace modes the interpreter's installation (the base interpreter behind a
virtual environment, see :class:`Interpreter`) is bind-mounted read-only at
``/tmp/.python`` inside the namespace before the uid drop, so kernel isolation does not
depend on where the checkout or the interpreter lives (under ``/tmp``, which the private
mount hides, or under a home directory ``nobody`` cannot enter).

**Limits and guard** (always): ``resource`` limits set by the trusted runner before the
program is loaded (RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_CORE = 0);
stdout/stderr go to files, so RLIMIT_FSIZE also caps output (the program dies of SIGXFSZ);
and the audit-hook guard of :mod:`pipeline.evaluation.sandbox_guard` (no sockets, no processes, no
signals to others, no writes outside the working directory, no ``/proc/<other pid>``).
RLIMIT_NPROC counts per uid and root ignores it, so under ``process`` as root only the
guard stops a fork bomb.

**Verdicts** (:meth:`Sandbox.check`): the benchmark's tests run in a second process, not
the program's, and call the program's functions through pipes with plain data both ways
(:mod:`pipeline.evaluation.sandbox_harness`); "passed" means that process ran the tests to their end.
Nothing the program does to its own process (exit status, exit hooks, builtins, trace
functions, output) reaches that verdict. :meth:`Sandbox.run` runs one whole program and
reports only its exit status; it is for trusted probes and containment tests.

**Time** has one status: a program stopped by the wall clock (``timeout_s``) or by the CPU
limit (``cpu_s``: SIGXCPU, or SIGKILL one second later if it ignores that) is ``timeout``,
whichever fires first.
"""

from __future__ import annotations

import inspect
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from pipeline.core.errors import PipelineError

ISOLATION_CHOICES = ("auto", "namespaces", "process")
MODES = ("namespaces+nobody", "user-namespaces", "process")
_PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # world-writable on most hosts
_INNER_PYTHON = "/tmp/.python"  # where the interpreter's installation appears in a namespace
_CHILD_SOURCE = "".join(Path(__file__).with_name(name).read_text()
                        for name in ("sandbox_guard.py", "sandbox_harness.py"))
_PROBE = "import sys\nprint('sandbox-ok', repr(sys.version))\n"
# The probe's own wall clock: a probe that only waited for a busy CPU (seen: over 1.5 s at
# load 8) must not cost the kernel isolation, so it does not get the programs' timeout_s.
_PROBE_TIMEOUT_S = 60.0
_T = TypeVar("_T")
SETTING_KEYS = ("isolation", "python", "workers")  # evaluation.sandbox keys besides the Limits


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, whole process tree
    cpu_s: int = 10  # RLIMIT_CPU per process (soft; the hard limit is one second more)
    memory_mb: int = 1024  # RLIMIT_AS (address space)
    max_processes: int = 32  # RLIMIT_NPROC (counted per uid)
    max_file_mb: int = 16  # RLIMIT_FSIZE: any file written, stdout/stderr included
    tmpfs_mb: int = 64  # size of each private tmpfs (namespace modes)
    output_chars: int = 2000  # stdout/stderr kept in the record (head)


@dataclass
class RunResult:
    """The verdict on one program. From :meth:`Sandbox.check`: ``passed`` means the tests ran
    to their end against it; from :meth:`Sandbox.run`: exit status 0 within the limits."""

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


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs programs: the base interpreter behind a virtual environment
    (programs get ``-I -S``, so a venv would add nothing), and how a namespace reaches it."""

    executable: str  # real path on the host
    prefix: str  # its installation (sys.base_prefix), bind-mounted read-only in a namespace
    inside: str  # path of the executable in a namespace: under _INNER_PYTHON, or the host path
    library_path: str  # in a namespace: directory of a shared libpython in the bound prefix, or ""
    version: str  # sys.version, which the probe checks

    @classmethod
    def describe(cls, facts: dict) -> "Interpreter":
        """From what the interpreter says about itself (see :func:`find_interpreter`)."""
        executable, prefix = os.path.realpath(facts["executable"]), os.path.realpath(facts["prefix"])
        rel, lib = os.path.relpath(executable, prefix), facts["libdir"]  # libdir: "" for a static build
        # An installation whose executable or platform files lie outside its prefix cannot be
        # bound as one tree; it runs at its host path (the probe says if the sandbox user can).
        if _leaves(rel) or os.path.realpath(facts["exec_prefix"]) != prefix:
            return cls(executable, prefix, executable, "", facts["version"])
        return cls(executable, prefix, f"{_INNER_PYTHON}/{rel}",
                   f"{_INNER_PYTHON}/{lib}" if lib and not _leaves(lib) else "", facts["version"])


def _leaves(relative: str) -> bool:
    """Whether a relative path climbs out of the directory it is relative to."""
    return relative == ".." or relative.startswith("../")


def _facts() -> dict:
    """What :class:`Interpreter` needs to know, as this interpreter sees itself. LIBDIR is a
    build-time path (an installation may have moved since), so only its place relative to
    the build-time prefix is kept."""
    import os
    import sys
    import sysconfig  # imported here: this function's source also runs in other interpreters

    libdir, built = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("prefix")
    shared = sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and built
    return {"executable": getattr(sys, "_base_executable", "") or sys.executable, "prefix": sys.base_prefix,
            "exec_prefix": sys.base_exec_prefix, "version": sys.version,
            "libdir": os.path.relpath(libdir, built) if shared else ""}


def find_interpreter(python: str | None) -> Interpreter:
    """The interpreter ``python`` (default: the one running this) as :class:`Interpreter`."""
    if python is None:
        return Interpreter.describe(_facts())
    try:
        source = inspect.getsource(_facts) + "import json\nprint(json.dumps(_facts()))\n"  # stdlib only
        out = subprocess.run([python, "-I", "-S", "-c", source], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        return Interpreter.describe(json.loads(out))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        said = (getattr(exc, "stderr", "") or "").strip()[-300:]
        raise PipelineError(f"evaluation.sandbox.python {python!r} does not run as a Python interpreter "
                            f"({exc}{': ' + said if said else ''})",
                            "set evaluation.sandbox.python to a Python 3 executable, or remove it") from exc


def _which(name: str) -> str | None:
    return shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _wrapper(mode: str, limits: Limits, python: Interpreter, stage: Path) -> list[str]:
    """The argv prefix that puts the interpreter into its namespaces (empty for ``process``).

    ``stage`` is an empty directory the evaluator can reach: the private /tmp is mounted there
    first, the interpreter is bound into it while its host path is still visible (it may lie
    under the host's /tmp, or where ``nobody`` cannot go), and then it is bound over /tmp.
    """
    if mode == "process":
        return []
    unshare, mount, setpriv, mkdir = _which("unshare"), _which("mount"), _which("setpriv"), _which("mkdir")
    if not (unshare and mount and setpriv and mkdir):
        raise PipelineError("the sandbox needs unshare, mount and setpriv (util-linux), and mkdir",
                            "install util-linux, or set evaluation.sandbox.isolation: process")
    tmpfs = f"size={limits.tmpfs_mb}m,mode=1777,nosuid,nodev"
    q = shlex.quote
    steps = [f"{mount} -t tmpfs -o {tmpfs} sandbox {q(str(stage))}"]
    if python.inside.startswith(_INNER_PYTHON + "/"):
        inner = q(f"{stage}/{Path(_INNER_PYTHON).name}")
        steps += [f"{mkdir} -m 755 {inner}", f"{mount} --bind -o ro,nosuid,nodev {q(python.prefix)} {inner}"]
    # --rbind rather than --move: inside a user namespace (the non-root mode) moving the
    # staged mount is refused (EPERM, util-linux 2.38), a recursive bind is not.
    steps.append(f"{mount} --rbind {q(str(stage))} /tmp")
    steps += [f"{{ [ ! -d {d} ] || {mount} -t tmpfs -o {tmpfs} sandbox {d}; }}" for d in _PRIVATE_DIRS[1:]]
    drop = [setpriv, "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
    ns = [unshare, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
    if mode == "namespaces+nobody":
        uid, gid = _nobody()
        drop[1:1] = [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    else:
        ns[1:1] = ["--user", "--map-root-user"]
    if python.library_path:  # a shared libpython is found by an absolute RUNPATH that is not here
        drop.insert(0, f"LD_LIBRARY_PATH={q(python.library_path)}")
    # Steps joined by ";" under set -e: in an "a && b" list a failing a would not stop sh,
    # and the program would run without its private mounts.
    # sh stays the namespace's init (no exec): the program is then an ordinary process
    # that its own signals can kill, and when sh exits the kernel kills any leftovers.
    script = "set -e; " + "; ".join(steps) + "; cd /tmp; set +e; " + " ".join(drop) + ' -- "$@"; exit $?'
    return ns + ["--", "/bin/sh", "-c", script, "sandbox"]


def _signal_of(rc: int, mode: str) -> int | None:
    """The signal that ended a process; sh, the namespace's init, reports it as 128 + n."""
    return -rc if rc < 0 else (rc - 128 if mode != "process" and 128 < rc < 160 else None)


def _describe_exit(rc: int, mode: str, cpu_s: float, limits: Limits) -> tuple[str, str]:
    """(status, reason) for a program that ended by itself or by a limit (not the wall clock).

    The CPU limit sends SIGXCPU at ``cpu_s`` and SIGKILL at ``cpu_s + 1`` (a program that
    ignores SIGXCPU); both are ``timeout``, like the wall clock, so a hanging program gets
    one status whichever limit fires first.
    """
    sig = _signal_of(rc, mode)
    if sig == signal.SIGXFSZ:
        return "output_limit", "file/output size limit exceeded (SIGXFSZ)"
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_s):
        return "timeout", f"CPU time limit of {limits.cpu_s} s exceeded"
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "killed", f"killed by {name}"
    return "failed", f"exit status {rc}"


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


def _reap(proc: subprocess.Popen, deadline: float | None) -> tuple[int, float, bool]:
    """Wait for ``proc`` (killing its group at ``deadline``, a monotonic time): (exit code,
    CPU seconds of it and its waited-for descendants, whether the deadline hit).

    os.wait4 rather than Popen.wait, for the CPU time that tells a CPU-limit SIGKILL apart.
    """
    timed_out, delay = False, 0.001
    while True:
        pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
        if pid:
            break
        if time.monotonic() >= deadline:
            timed_out, deadline = True, None
            _kill_group(proc.pid)
            continue
        time.sleep(delay)
        delay = min(2 * delay, 0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, timed_out


def _tests_verdict(scratch: Path) -> tuple[str, str]:
    """(outcome, reason) from the tests process's stdout: passed | failed | program_ended,
    or ``no_verdict`` if it wrote none (it crashed or was killed)."""
    try:
        verdict = json.loads((scratch / "tests.out").read_text().strip().splitlines()[-1])
        return str(verdict["outcome"]), str(verdict.get("reason", ""))
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        tail = _last_error_line((scratch / "tests.err").read_text(errors="replace"))
        return "no_verdict", f"the tests process gave no verdict ({tail})"


@dataclass
class Sandbox:
    """Runs Python programs under the isolation described in the module docstring."""

    limits: Limits = field(default_factory=Limits)
    isolation: str = "auto"
    python: str | None = None  # interpreter for the programs; default: the one running this
    guard: bool = True  # the audit-hook layer (tests switch it off to test the kernel alone)
    mode: str = field(init=False, default="")
    fallback_note: str = field(init=False, default="")
    interpreter: Interpreter = field(init=False)

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATION_CHOICES + MODES:
            raise PipelineError(f"unknown sandbox isolation {self.isolation!r}",
                                f"set evaluation.sandbox.isolation to one of {ISOLATION_CHOICES}")
        self.interpreter = find_interpreter(self.python)
        self.mode, self.fallback_note = resolve_isolation(self.isolation, self)

    @classmethod
    def from_params(cls, block: dict | None) -> "Sandbox":
        """The sandbox ``evaluation.sandbox`` of params.yaml describes (limits, isolation,
        interpreter); the isolation is probed here, before any model is loaded."""
        cfg = dict(block or {})
        limit_keys = {f.name for f in fields(Limits)}
        unknown = sorted(set(cfg) - limit_keys - set(SETTING_KEYS))
        if unknown:
            raise PipelineError(f"unknown evaluation.sandbox setting(s) {unknown}",
                                f"use only {sorted(limit_keys | set(SETTING_KEYS))}")
        limits = Limits(**{k: v for k, v in cfg.items() if k in limit_keys})
        return cls(limits, isolation=cfg.get("isolation", "auto"), python=cfg.get("python"))

    def describe(self) -> dict:
        return {"isolation": self.mode, "guard": self.guard, "fallback_note": self.fallback_note,
                "limits": asdict(self.limits), "python": self.interpreter.version.split()[0],
                "verdict": "benchmark tests in a separate process, plain data both ways"}

    def status_line(self) -> str:
        """One line on the isolation in force for the stage's log; a fallback from kernel
        isolation is a warning, since only limits and the guard then protect the host."""
        info = self.describe()
        line = f"code sandbox: isolation={info['isolation']} guard={info['guard']} python={info['python']}"
        if info["fallback_note"]:
            line = (f"WARNING: {line}: no kernel isolation, only resource limits and the in-process guard stand "
                    f"between generated code and this host ({info['fallback_note']}). To fail instead, set "
                    "evaluation.sandbox.isolation: namespaces")
        return line

    def _child(self, role: str, guard: bool, args: tuple[int | str, ...] = ()) -> list[str]:
        cfg = json.dumps({"cpu_s": self.limits.cpu_s, "memory_mb": self.limits.memory_mb,
                          "max_processes": self.limits.max_processes,
                          "max_file_mb": self.limits.max_file_mb})
        return ["-I", "-S", "-B", "-c", _LIMITS_PRELUDE + _CHILD_SOURCE, role, "1" if guard else "0", cfg,
                *map(str, args)]

    def command(self, mode: str, stage: Path, role: str = "run", fds: tuple[int, ...] = ()) -> list[str]:
        """The argv of a program's process: its namespaces (``stage``: see :func:`_wrapper`)."""
        python = self.interpreter.executable if mode == "process" else self.interpreter.inside
        return _wrapper(mode, self.limits, self.interpreter, stage) + [python, *self._child(role, self.guard, fds)]

    def _env(self, mode: str, home: Path) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        home_dir = "/tmp" if mode != "process" else str(home)
        return {**env, "HOME": home_dir, "TMPDIR": home_dir}

    def _start(self, argv: list[str], scratch: Path, name: str, source: str, env: dict[str, str],
               cwd: Path, fds: tuple[int, ...] = ()) -> subprocess.Popen:
        """Start one process with ``source`` on stdin and its output in ``scratch/name.*``."""
        (scratch / f"{name}.py").write_text(source)
        with open(scratch / f"{name}.py", "rb") as fin, open(scratch / f"{name}.out", "wb") as fout, \
                open(scratch / f"{name}.err", "wb") as ferr:
            return subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=ferr, env=env, cwd=cwd,
                                    start_new_session=True, close_fds=True, pass_fds=fds)

    def _in_scratch(self, work: Callable[[Path], _T]) -> _T:
        scratch = Path(tempfile.mkdtemp(prefix="semalign-sbx-"))  # 0700: the program can't reach it
        try:
            for sub in ("work", "ns", "tests"):
                (scratch / sub).mkdir()
            return work(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _outputs(self, scratch: Path) -> tuple[str, str, bool]:
        """The program's stdout and stderr heads, and whether either reached the size limit."""
        stdout, out_size = _read_head(scratch / "program.out", self.limits.output_chars)
        stderr, err_size = _read_head(scratch / "program.err", self.limits.output_chars)
        return stdout, stderr, max(out_size, err_size) >= self.limits.max_file_mb * 2**20

    def _result(self, status: str, reason: str, rc: int | None, start: float, scratch: Path,
                mode: str) -> RunResult:
        stdout, stderr, full = self._outputs(scratch)
        if status != "output_limit" and full:
            status, reason = "output_limit", "output size limit reached"
        if status == "failed" and reason.startswith("exit status") and _last_error_line(stderr):
            reason = _last_error_line(stderr)
        return RunResult(status == "passed", status, reason, rc, round(time.monotonic() - start, 3), stdout, stderr,
                         isolation=mode, guard=self.guard)

    def run(self, program: str, mode: str | None = None, timeout_s: float | None = None) -> RunResult:
        """Run one whole program; "passed" is exit status 0. Never raises for anything the
        program does. Not a verdict on benchmark tests: see :meth:`check`. ``timeout_s``
        replaces ``limits.timeout_s`` (the probe's)."""
        mode = mode or self.mode
        timeout_s = timeout_s or self.limits.timeout_s

        def work(scratch: Path) -> RunResult:
            start = time.monotonic()
            proc = self._start(self.command(mode, scratch / "ns"), scratch, "program", program,
                               self._env(mode, scratch / "work"), scratch / "work")
            try:
                rc, cpu, timed_out = _reap(proc, start + timeout_s)
            finally:
                _kill_group(proc.pid)  # stragglers that kept the group (process mode)
            if timed_out:
                status, reason = "timeout", f"wall-clock timeout after {timeout_s:g} s"
            elif rc == 0:
                status, reason = "passed", "passed"
            else:
                status, reason = _describe_exit(rc, mode, cpu, self.limits)
            return self._result(status, reason, rc, start, scratch, mode)

        return self._in_scratch(work)

    def check(self, code: str, tests: str, entry_point: str = "") -> RunResult:
        """Judge ``code`` by the benchmark's ``tests``: passed only if the tests, run in a
        process of their own against the callables ``code`` defines, ran to their end.
        ``entry_point``: the function the tests call, the one name of a builtin that the
        program may define for them.

        The program runs under this sandbox's isolation; the tests process runs the trusted
        tests with the same resource limits and the guard, outside the program's namespaces,
        so the program can neither see nor signal it. Never raises for anything the program does.
        """
        mode = self.mode

        def work(scratch: Path) -> RunResult:
            requests_r, requests_w = os.pipe()
            replies_r, replies_w = os.pipe()
            start = time.monotonic()
            try:
                program = self._start(self.command(mode, scratch / "ns", "program", (requests_r, replies_w)),
                                      scratch, "program", code, self._env(mode, scratch / "work"), scratch / "work",
                                      (requests_r, replies_w))
                try:
                    tester = self._start([self.interpreter.executable,
                                          *self._child("tests", True, (replies_r, requests_w, entry_point))],
                                         scratch, "tests", tests, self._env("process", scratch / "tests"),
                                         scratch / "tests", (replies_r, requests_w))
                except BaseException:
                    _kill_group(program.pid)
                    _reap(program, None)
                    raise
            finally:
                for fd in (requests_r, requests_w, replies_r, replies_w):
                    os.close(fd)  # the children hold their ends; EOF then means one of them ended
            deadline = start + self.limits.timeout_s
            try:
                _, _, timed_out = _reap(tester, deadline)
                outcome, reason = _tests_verdict(scratch)
                if outcome != "program_ended" or timed_out:
                    _kill_group(program.pid)  # decided: the program has nothing left to do
                # A program that ended early is still exiting (its pipes close first): its
                # own status, not our kill, says how it ended; the deadline still holds.
                rc, cpu, program_timed_out = _reap(program, deadline)
            finally:
                _kill_group(tester.pid)
                _kill_group(program.pid)
            if timed_out or program_timed_out:
                return self._result("timeout", f"wall-clock timeout after {self.limits.timeout_s:g} s", rc, start,
                                    scratch, mode)
            if outcome == "passed":
                return self._result("passed", "passed", rc, start, scratch, mode)
            if outcome == "failed":
                return self._result("failed", reason, rc, start, scratch, mode)
            return self._ended(outcome, reason, scratch, rc, cpu, start, mode)

        return self._in_scratch(work)

    def _ended(self, outcome: str, reason: str, scratch: Path, rc: int, cpu: float, start: float,
               mode: str) -> RunResult:
        """A verdict where the program ended before the tests did (or no verdict came)."""
        if outcome != "program_ended":
            return self._result("failed", reason, rc, start, scratch, mode)
        status, how = _describe_exit(rc, mode, cpu, self.limits)
        if status == "failed":  # it exited: say why (its last error line) and when
            stderr = (scratch / "program.err").read_text(errors="replace")[-20000:]
            how = _last_error_line(stderr) or how
            return self._result("failed", f"{reason}: {how}", rc, start, scratch, mode)
        return self._result(status, how, rc, start, scratch, mode)

    def _many(self, job: Callable[..., RunResult], items: list, workers: int) -> list[RunResult]:
        if workers <= 1:
            return [job(*item) for item in items]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda item: job(*item), items))

    def run_many(self, programs: Iterable[str], workers: int = 1) -> list[RunResult]:
        """:meth:`run` for several programs concurrently (each alone in its sandbox); order kept."""
        return self._many(self.run, [(p,) for p in programs], workers)

    def check_many(self, cases: Iterable[tuple[str, str, str]], workers: int = 1) -> list[RunResult]:
        """:meth:`check` for several (code, tests, entry point) cases concurrently; order kept."""
        return self._many(self.check, list(cases), workers)


# Trusted code run first in the child: lower the limits before the program is even read.
# The CPU limit's hard value is one second above the soft one, so SIGXCPU comes first.
_LIMITS_PRELUDE = """
import json as _json, resource as _resource, sys as _sys
_cfg = _json.loads(_sys.argv[3])
for _name, _soft, _hard in ((_resource.RLIMIT_CPU, _cfg["cpu_s"], _cfg["cpu_s"] + 1),
                            (_resource.RLIMIT_AS, _cfg["memory_mb"] * 2**20, None),
                            (_resource.RLIMIT_NPROC, _cfg["max_processes"], None),
                            (_resource.RLIMIT_FSIZE, _cfg["max_file_mb"] * 2**20, None),
                            (_resource.RLIMIT_CORE, 0, None)):
    _resource.setrlimit(_name, (_soft, _soft if _hard is None else _hard))
del _json, _resource, _cfg, _name, _soft, _hard
"""


def _candidates(requested: str) -> list[str]:
    if requested in MODES:
        return [requested]
    ns = "namespaces+nobody" if os.geteuid() == 0 else "user-namespaces"
    if requested == "namespaces":
        return [ns]
    return [ns, "process"]


def resolve_isolation(requested: str, sandbox: Sandbox) -> tuple[str, str]:
    """The strongest mode whose probe program runs here, with the intended interpreter;
    (mode, note on any fallback)."""
    failures = []
    expected = f"sandbox-ok {sandbox.interpreter.version!r}"
    for mode in _candidates(requested):
        try:
            result = sandbox.run(_PROBE, mode=mode, timeout_s=max(_PROBE_TIMEOUT_S, sandbox.limits.timeout_s))
        except PipelineError as exc:
            failures.append(f"{mode}: {exc.problem}")
            continue
        if result.passed and expected in result.stdout:
            note = "; ".join(failures)
            return mode, (f"fell back to {mode} because " + note) if note else ""
        if result.passed:
            failures.append(f"{mode}: ran another Python ({result.stdout.strip()[:200]}) than "
                            f"{sandbox.interpreter.executable} ({sandbox.interpreter.version!r})")
        else:
            failures.append(f"{mode}: {result.reason} {result.stderr.strip()[-300:]}")
    raise PipelineError(
        "the code sandbox cannot run Python here: " + "; ".join(failures),
        "check that util-linux (unshare, setpriv) works and that the sandbox user can execute "
        "the interpreter (set evaluation.sandbox.python), or set evaluation.sandbox.isolation: auto or process",
    )
