"""The child side of the code sandbox: stdlib only, run by the sandboxed interpreter.

:mod:`pipeline.evaluation.sandbox` starts ``python -I -S -B -c SOURCE ROLE GUARD LIMITS [FD FD [ENTRY_POINT]]``,
where SOURCE is its limits prelude, :mod:`pipeline.evaluation.sandbox_guard` and this file. ROLE:

* ``run``: the program on stdin runs as ``__main__``; its exit status is all it reports.
* ``program``: the candidate code on stdin runs as ``__main__``; then the process answers
  calls to the callables it defined, one JSON line per call and per answer, on two pipes.
* ``tests``: the benchmark's tests on stdin run in a process of their own, never the
  candidate's. Each callable the program defined appears in the tests' namespace as a
  stand-in that forwards the call, so arguments and return values cross between the two
  processes as plain data only (``encode``/``decode``). The verdict goes to this process's
  stdout, which only the evaluator reads.

Why a second process: in the program's own process nothing it could not forge exists.
It can end with status 0 before the tests (``sys.exit``, ``os._exit``, ``atexit``), replace
builtins, swap ``check`` through a trace function, or print a success line, and it can
read anything a harness there keeps. Here the tests run with their own builtins in their
own address space, and the only thing a program controls is what its functions return.
Returned values are rebuilt from their data as built-in types, so a value whose ``__eq__``
always says True cannot reach an ``assert ... ==``: a subclass of a built-in type arrives as
that type's content (read through the base type's own methods) and any other object as an
opaque stand-in equal only to itself.
"""

import builtins
import json
import os
import sys
import traceback
from typing import BinaryIO, NoReturn, Optional

_MAX_DEPTH = 100  # nesting of a value crossing between the processes
_MAX_LINE = 8 * 2**20  # bytes of one message
_BIG_INT_BITS = 12000  # beyond ~4300 digits json refuses ints (sys.set_int_max_str_digits)


class Opaque:
    """A program's value of a type that cannot cross as data; equal only to itself."""

    __slots__ = ("type_name", "text")

    def __init__(self, type_name: str, text: str) -> None:
        self.type_name, self.text = type_name, text

    def __repr__(self) -> str:
        return f"<{self.type_name} from the program: {self.text}>"


class ProgramEnded(BaseException):
    """The program's process ended or broke the protocol; BaseException so that a test's
    ``except Exception`` cannot turn it into a pass."""


class ProgramRaised(Exception):
    """The program's function raised something that is not a built-in exception type."""


def _opaque_text(value: object) -> str:
    try:
        return repr(value)[:200]
    except BaseException:  # the object's own __repr__ may fail on purpose
        return "?"


def encode(value: object, strict: bool = False, depth: int = 0) -> object:
    """A JSON-able form of a plain value. Unsupported types become ``["O", type, repr]``
    (``strict``: a TypeError instead; the tests side never sends what it cannot)."""
    if depth > _MAX_DEPTH:
        if strict:
            raise TypeError("value nested too deeply to cross to the program")
        return ["O", "deeply nested value", ""]
    if value is None or value is True or value is False:
        return value
    nested = depth + 1
    # Exact types first, then subclasses through their base type's methods, so that an
    # overridden __eq__, __iter__ or __repr__ never decides what crosses.
    if isinstance(value, int):
        number = int.__index__(value)
        return number if number.bit_length() < _BIG_INT_BITS else ["I", format(number, "x")]
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, complex):
        number = complex.__complex__(value)
        return ["C", number.real, number.imag]
    if isinstance(value, bytes):
        return ["B", bytes.hex(value)]
    if isinstance(value, bytearray):
        return ["A", bytearray.hex(value)]
    if isinstance(value, list):
        return ["L", [encode(v, strict, nested) for v in list.__iter__(value)]]
    if isinstance(value, tuple):
        return ["T", [encode(v, strict, nested) for v in tuple.__iter__(value)]]
    if isinstance(value, dict):
        return ["D", [[encode(k, strict, nested), encode(v, strict, nested)] for k, v in dict.items(value)]]
    if isinstance(value, frozenset):
        return ["F", [encode(v, strict, nested) for v in frozenset.__iter__(value)]]
    if isinstance(value, set):
        return ["S", [encode(v, strict, nested) for v in set.__iter__(value)]]
    if strict:
        raise TypeError(f"a {type(value).__name__} cannot be passed to the program (only plain data)")
    return ["O", type(value).__name__, _opaque_text(value)]


def decode(data: object, depth: int = 0) -> object:
    """The value ``encode`` described, built from built-in types only; ValueError on
    anything else (a hostile program may send any bytes)."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if not (isinstance(data, list) and data and isinstance(data[0], str)):
        raise ValueError(f"not an encoded value: {str(data)[:80]}")
    tag, rest, nested = data[0], data[1:], depth + 1
    if tag == "I" and len(rest) == 1 and isinstance(rest[0], str):
        return int(rest[0], 16)
    if tag == "C" and len(rest) == 2 and all(type(x) in (int, float) for x in rest):
        return complex(rest[0], rest[1])
    if tag in ("B", "A") and len(rest) == 1 and isinstance(rest[0], str):
        return (bytes if tag == "B" else bytearray).fromhex(rest[0])
    if tag == "O" and len(rest) == 2 and all(isinstance(x, str) for x in rest):
        return Opaque(rest[0][:100], rest[1][:200])
    if len(rest) != 1 or not isinstance(rest[0], list):
        raise ValueError(f"malformed {tag!r} value")
    items = rest[0]
    if tag == "D":
        if not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise ValueError("malformed dict")
        return {decode(k, nested): decode(v, nested) for k, v in items}
    kinds = {"L": list, "T": tuple, "S": set, "F": frozenset}
    if tag not in kinds:
        raise ValueError(f"unknown value tag {tag!r}")
    return kinds[tag](decode(v, nested) for v in items)


def _send(stream: BinaryIO, message: dict) -> None:
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def _receive(stream: BinaryIO) -> Optional[dict]:
    """One message, or None at end of stream; ValueError if it is not one."""
    line = stream.readline(_MAX_LINE + 1)
    if not line:
        return None
    if len(line) > _MAX_LINE or not line.endswith(b"\n"):
        raise ValueError("message too long")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("message is not an object")
    return message


def serve(namespace: dict, requests: BinaryIO, replies: BinaryIO) -> None:
    """The program side: announce the callables, then answer calls until the tests end."""
    names = sorted(n for n, v in namespace.items() if isinstance(n, str) and not n.startswith("__") and callable(v))
    _send(replies, {"ready": names})
    while True:
        request = _receive(requests)
        if request is None:
            return
        try:
            result = namespace[request["call"]](*decode(request["args"]), **decode(request["kwargs"]))
            reply = {"value": encode(result)}
            if len(json.dumps(reply)) > _MAX_LINE:
                reply = {"raised": ["ValueError", "return value too large to pass to the tests"]}
        except BaseException as exc:  # SystemExit too: the tests decide what it means
            reply = {"raised": [type(exc).__name__, _opaque_text(exc)]}
        _send(replies, reply)


class _Remote:
    """Stands in the tests' namespace for one of the program's callables."""

    def __init__(self, name: str, channel: "_Channel") -> None:
        self.__name__ = self.__qualname__ = name
        self._channel = channel

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._channel.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<program's {self.__name__}>"


class _Channel:
    """The tests side of the two pipes; remembers if the program ended."""

    def __init__(self, replies: BinaryIO, requests: BinaryIO) -> None:
        self.replies, self.requests = replies, requests
        self.ended = ""

    def end(self, why: str) -> NoReturn:
        self.ended = self.ended or why
        raise ProgramEnded(self.ended)

    def receive(self, during: str) -> dict:
        try:
            message = _receive(self.replies)
        except Exception as exc:  # anything a hostile program sends: not a value, not a pass
            self.end(f"the program broke the call protocol {during} ({type(exc).__name__})")
        if message is None:
            self.end(f"the program ended {during}")
        return message

    def call(self, name: str, args: tuple, kwargs: dict) -> object:
        if self.ended:
            raise ProgramEnded(self.ended)
        request = {"call": name, "args": encode(args, strict=True), "kwargs": encode(kwargs, strict=True)}
        try:
            _send(self.requests, request)
        except OSError:
            self.end(f"the program ended before a call to {name}")
        reply = self.receive(f"during a call to {name}")
        try:
            if "value" in reply:
                return decode(reply["value"])
            kind, text = reply["raised"]
            kind, text = str(kind), str(text)
        except Exception as exc:  # as in receive
            self.end(f"the program broke the call protocol during a call to {name} ({type(exc).__name__})")
        error = getattr(builtins, kind, None)
        if isinstance(error, type) and issubclass(error, Exception):
            raise error(text)
        raise ProgramRaised(f"{kind}: {text}")


def _last_line(exc: BaseException) -> str:
    """``Type: message``, as the last line of the exception's traceback reads."""
    message = str(exc)
    return (f"{type(exc).__name__}: {message}" if message else type(exc).__name__)[:300]


def run_tests(source: str, replies_fd: int, requests_fd: int, entry_point: str) -> None:
    """The tests side: wait for the program's callables, run the tests, report on fd 1.

    A callable named like a builtin is bound only if it is the entry point (MBPP has one
    called ``sum``): any other would shadow the tests' own ``all``, ``abs``, ``sorted``...
    """
    verdict_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the tests' own prints go to stderr; only the verdict uses the old stdout
    channel = _Channel(os.fdopen(replies_fd, "rb"), os.fdopen(requests_fd, "wb"))
    verdict = {}
    try:
        ready = channel.receive("before the tests ran")
        names = ready.get("ready")
        if not (isinstance(names, list) and all(isinstance(n, str) and n.isidentifier() for n in names)):
            channel.end("the program broke the call protocol before the tests ran")
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        namespace.update({n: _Remote(n, channel) for n in names if n == entry_point or not hasattr(builtins, n)})
        exec(compile(source, "tests.py", "exec"), namespace)
    except ProgramEnded:
        pass
    except BaseException as exc:  # noqa: B036 (SystemExit from a test is a failure too)
        verdict = {"outcome": "failed", "reason": _last_line(exc)}
        traceback.print_exc()
    if channel.ended:  # even if a test swallowed ProgramEnded with a bare except
        verdict = {"outcome": "program_ended", "reason": channel.ended}
    print(json.dumps(verdict or {"outcome": "passed"}), file=verdict_out, flush=True)


def main() -> None:
    import runpy  # imported before the guard so the runner's own imports are not audited

    role, guard = sys.argv[1], sys.argv[2] == "1"
    args = sys.argv[4:]
    source = sys.stdin.read()
    sys.stdin = open(os.devnull)  # programs that call input() get EOF, not a hang
    if role == "tests":
        if guard:
            install(os.getcwd())  # noqa: F821 (sandbox_guard.py precedes this file)
        del sys.argv[1:]
        run_tests(source, int(args[0]), int(args[1]), args[2])
        return
    with open("program.py", "w") as f:
        f.write(source)
    if role == "program":
        requests, replies = os.fdopen(int(args[0]), "rb"), os.fdopen(int(args[1]), "wb")
    if guard:
        install(os.getcwd())  # noqa: F821
    del sys.argv[1:]
    namespace = runpy.run_path("program.py", run_name="__main__")
    if role == "program":
        serve(namespace, requests, replies)


if __name__ == "__main__":
    main()
