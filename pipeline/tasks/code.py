"""The chat format shared by the code tasks (HumanEval, MBPP).

The user gets the benchmark's prompt code (signature + docstring) in a ```python block and
is asked for the whole function back; a reference answer is the prompt code completed by a
reference body, in one ```python block. An evaluator extracts the first python block and
runs ``prompt + block + tests``: a full function in the block simply redefines the stub.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.errors import PipelineError

HEAD = ("Complete the following Python function. Reply with the complete function, including its "
        "signature and any imports it needs, in a single ```python code block.\n\n")


def code_block(code: str) -> str:
    body = code.lstrip("\n").rstrip()  # many HumanEval prompts open with blank lines
    return f"```python\n{body}\n```"


def prompt_text(code: str) -> str:
    return HEAD + code_block(code)


def reference_text(prompt_code: str, body: str) -> str:
    return code_block(prompt_code + body)


def question_of(record: dict[str, Any]) -> str:
    """The benchmark prompt code a record asks about (what must not straddle splits)."""
    meta = record["meta"]
    if "prompt" not in meta:
        raise PipelineError(f"record {record['id']} has no meta.prompt", "re-run the data stage")
    return meta["prompt"]
