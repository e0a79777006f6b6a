"""The in-process half of the sandbox: runs *inside* the child interpreter, stdlib only.

:mod:`pipeline.evaluation.sandbox` runs this file's source, followed by :mod:`pipeline.evaluation.sandbox_harness`,
in the isolated child (``python -I -S -B -c ...``); unless switched off, the harness calls
:func:`install` to add an audit hook (``sys.addaudithook``, PEP 578) before any program code
runs.

The audit hook is defence in depth, not the security boundary: native code can bypass it,
so it blocks the usual ways in (``ctypes``, ``_posixsubprocess``) and refuses:

* creating sockets (all families) and resolving names;
* starting processes (fork, exec, spawn, ``os.system``, ``subprocess``);
* signalling any process but itself;
* writing, creating, renaming or deleting paths outside the working directory;
* reading ``/proc/<pid>`` of other processes (their environment, command line, memory).

Where the kernel layer is available (namespaces, another uid; see pipeline/evaluation/sandbox.py)
these are also enforced by the kernel; where it is not, this hook is all there is.
"""

import os
import re
import sys

_BLOCKED_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.sendto", "socket.sendmsg",
    "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system", "subprocess.Popen",
    "os.startfile", "pty.spawn",
    "os.killpg", "signal.pthread_kill",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "resource.setrlimit", "resource.prlimit",
})
_BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters"})
# Events whose path arguments must stay inside the working directory.
_PATH_EVENTS = frozenset({
    "os.remove", "os.rmdir", "os.rename", "os.link", "os.symlink", "os.truncate", "os.chmod",
    "os.chown", "os.chflags", "os.mkdir", "os.mkfifo", "os.mknod", "os.utime", "os.setxattr",
    "os.removexattr", "shutil.rmtree", "shutil.copyfile", "shutil.copytree", "shutil.move",
})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PROC_PID = re.compile(r"^/proc/(\d+)(/|$)")


def _denied(event: str) -> PermissionError:
    return PermissionError(f"sandbox: {event} is not allowed")


def install(root: str) -> None:
    """Refuse the operations listed above; writes are allowed only under ``root``."""
    root = os.path.realpath(root)
    own = str(os.getpid())

    def inside(path) -> bool:
        if isinstance(path, int):  # a descriptor the program already holds
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event in _BLOCKED_EVENTS:
            raise _denied(event)
        if event == "import" and args[0] in _BLOCKED_IMPORTS:
            raise _denied(f"import {args[0]}")
        if event == "os.kill":
            if str(args[0]) != own:
                raise _denied(event)
        elif event == "open":
            path, _mode, flags = args
            if isinstance(path, int):
                return
            if flags & _WRITE_FLAGS and not inside(path):
                raise _denied(f"writing {path!r}")
            m = _PROC_PID.match(os.path.realpath(os.fsdecode(path)))
            if m and m.group(1) != own:
                raise _denied(f"reading {path!r}")
        elif event in _PATH_EVENTS:
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
            if not all(inside(p) for p in paths):
                raise _denied(f"{event} outside the sandbox directory")

    sys.addaudithook(hook)
