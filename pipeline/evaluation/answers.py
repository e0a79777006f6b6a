"""Reading answers out of chat-model outputs: GSM8K numbers and Python programs.

GSM8K follows lm-evaluation-harness's two filters:

* ``flexible``: the last number anywhere in the output;
* ``strict``: the first number right after "The answer is" or "####" (allowing only
  markdown bold and LaTeX ``\\(``, ``\\[``, ``\\boxed{`` around it).

Numbers are compared after removing "$" and thousands separators and as decimals, so
"1,234", "$1234" and "1234.00" all equal "1234". (The harness compares strings, which
would count "18.00" wrong against "18"; we consider that a formatting artefact.)

Code follows the usual chat-model post-processing (EvalPlus's "sanitize" idea): take the
fenced ```python block that defines the entry point (else the first block, else the raw
text), then keep only imports, definitions and assignments at the top level, so the
model's own ``print``/``assert``/``if __name__ == "__main__"`` code cannot make a correct
solution fail or hang on ``input()``. Among several definitions of the entry point, a
``pass``-only stub is dropped in favour of a real body (the 1.5B Instruct model often
writes a stub first; see offline-assets.md).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# "-$1,234.50", "18", "0.5"; the leading digit keeps "," and "." of prose out.
_NUMBER = r"-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
# Strict keeps the harness's anchor but lets the number sit in the wrappers chat models put
# around it ("The answer is **42**", "\\(42\\)", "\\boxed{42}"): the anchor is the format check.
_STRICT_RE = re.compile(r"(?:####|[Tt]he answer is:?)\s*(?:\*\*|\\\(|\\\[|\\boxed\{|\s)*(" + _NUMBER + ")")
_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PY_LANGS = {"", "python", "py", "python3"}
_KEPT_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
               ast.Assign, ast.AnnAssign)


# --- GSM8K ------------------------------------------------------------------------------
def normalize_number(text: str | None) -> str | None:
    """Canonical decimal string ("1,234.00" -> "1234"), or None if not a number."""
    if text is None:
        return None
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gsm8k_flexible(output: str) -> str | None:
    """The last number in the output."""
    found = _NUMBER_RE.findall(output)
    return normalize_number(found[-1]) if found else None


def gsm8k_strict(output: str) -> str | None:
    """The first number after "The answer is" / "####"."""
    m = _STRICT_RE.search(output)
    return normalize_number(m.group(1)) if m else None


# --- code -------------------------------------------------------------------------------
@dataclass
class ExtractedCode:
    """The program to test, and how it was obtained (kept in samples.jsonl for audits)."""

    code: str
    mode: str  # "rewrite": the answer defines the entry point; "completion": prompt + answer body
    notes: list[str]


def code_blocks(answer: str) -> list[str]:
    """Python fenced blocks in order (an unterminated last fence runs to the end)."""
    return [body for lang, body in _FENCE_RE.findall(answer) if lang.lower() in _PY_LANGS]


def _is_stub(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A body of only a docstring, ``pass``, ``...`` or ``raise NotImplementedError``."""
    for stmt in fn.body:
        if isinstance(stmt, ast.Pass):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        if isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt):
            continue
        return False
    return True


def _defines(code: str, name: str) -> bool:
    """Whether ``code`` defines ``name`` at the top level (a block cut off by the token limit
    counts if the definition starts before the cut)."""
    parsed = _parse_prefix(code)
    return parsed is not None and any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in parsed[0].body)


def _parse_prefix(code: str) -> tuple[ast.Module, list[str], bool] | None:
    """Parse ``code``, dropping trailing lines until it parses (generation cut mid-line)."""
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):
        try:
            return ast.parse("\n".join(lines[:end])), lines[:end], end < len(lines)
        except SyntaxError:
            continue
    return None


def sanitize(code: str, entry_point: str) -> tuple[str, list[str]]:
    """Keep top-level imports/defs/assignments; keep the last non-stub ``entry_point``."""
    parsed = _parse_prefix(code)
    if parsed is None:
        return code, ["unparsable: kept as is"]
    tree, lines, trimmed = parsed
    notes = ["trailing lines dropped to parse"] if trimmed else []
    entry_defs = [n for n in tree.body
                  if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point]
    real = [n for n in entry_defs if not _is_stub(n)]
    chosen = real[-1] if real else (entry_defs[-1] if entry_defs else None)
    kept: list[str] = []
    for node in tree.body:
        if not isinstance(node, _KEPT_NODES):
            notes.append(f"dropped top-level {type(node).__name__} at line {node.lineno}")
            continue
        if node in entry_defs and node is not chosen:
            if _is_stub(node) and chosen is not None and not _is_stub(chosen):
                notes.append(f"dropped stub {entry_point} at line {node.lineno}")
            continue
        # Decorators start before ``node.lineno``; keep them with their definition.
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        kept.append("\n".join(lines[start - 1: node.end_lineno]))
    return "\n".join(kept) + "\n", notes


def extract_code(answer: str, prompt: str, entry_point: str) -> ExtractedCode:
    """The program to run for a chat answer to a code prompt (before the tests are added)."""
    blocks = code_blocks(answer)
    notes: list[str] = []
    if blocks:
        defining = [b for b in blocks if _defines(b, entry_point)]
        nonstub = [b for b in defining if _has_real_def(b, entry_point)]
        body = (nonstub or defining or blocks)[0]
        if len(blocks) > 1:
            notes.append(f"{len(blocks)} code blocks; used one")
    else:
        body = answer
        notes.append("no code fence: used the raw answer")
    if _defines(body, entry_point):
        # The prompt keeps its imports and helper functions; the answer's definition,
        # appended after the prompt's docstring-only stub, replaces it.
        candidate, mode = prompt.rstrip() + "\n\n\n" + body, "rewrite"
    else:
        candidate, mode = prompt + body, "completion"
    code, more = sanitize(candidate, entry_point)
    return ExtractedCode(code, mode, notes + more)


def _has_real_def(code: str, name: str) -> bool:
    parsed = _parse_prefix(code)
    if parsed is None:
        return False
    tree = parsed[0]
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name and not _is_stub(n)
               for n in tree.body)


def humaneval_tests(test: str, entry_point: str) -> str:
    """HumanEval: the ``check`` function and the call on the entry point."""
    return f"{test}\n\ncheck({entry_point})\n"


def humaneval_program(code: str, test: str, entry_point: str) -> str:
    """HumanEval: the solution followed by its tests (the whole program, kept for audits)."""
    return f"{code}\n\n{humaneval_tests(test, entry_point)}"


def mbpp_program(code: str, tests: str) -> str:
    """MBPP (MultiPL-E form): the tests define ``check`` and call it themselves."""
    return f"{code}\n\n{tests}\n"
