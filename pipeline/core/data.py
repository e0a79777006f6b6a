"""Task records and their tokenisation.

A task split is a JSONL file of records::

    {"id": "mmlu-test-00012", "task": "mmlu",
     "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
     "meta": {...}}                       # task-specific fields the evaluator needs

The last message is the reference answer. Prompts are rendered with the tokenizer's chat
template (zero-shot, as the paper's protocol); tokenizers without one get a plain
``User:/Assistant:`` fallback.

Supervised positions are *prediction* positions: position ``t`` is supervised when token
``t + 1`` is an answer token, because the hidden state at ``t`` is what predicts it. With
``supervise="all"`` every non-padding prediction position counts (LaTen's train-on-inputs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # torch loads with the first tokenised split: the data stage only writes JSONL
    import torch

SPLITS = ("attribution", "transfer", "validation", "evaluation")
SUPERVISE_MODES = ("answer", "all")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"task file {p} is missing", "run the data stage first (`dvc repro data`)")
    records = []
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{p}:{i} is not valid JSON ({exc})", "re-run the data stage") from exc
    for r in records:
        validate_record(r, str(p))
    return records


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    from pipeline.core.artifacts import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def validate_record(record: dict[str, Any], where: str = "record") -> None:
    msgs = record.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2 or msgs[-1].get("role") != "assistant":
        raise PipelineError(
            f"{where}: record {record.get('id', '?')} needs a 'messages' list ending with an assistant answer",
            "write records as {'id', 'task', 'messages': [..., {'role': 'assistant', 'content': ...}]}",
        )


def load_split(task_dir: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """One split of a task: its records as the data stage wrote them (id, task, messages, meta).

    Plain JSONL, not a `datasets.Dataset`: converting the records cost 57x reading them, and
    importing the library 1.5 s per stage process, for records that are tokenised one by one
    (benchmarks/split_loading.py)."""
    if split not in SPLITS:
        raise PipelineError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    return read_jsonl(Path(task_dir) / f"{split}.jsonl")


def render_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """The prompt text for every message but the answer, ready for generation."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + "Assistant: "


def _answer_suffix(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """The answer text exactly as the chat template writes it after the prompt."""
    prompt = render_prompt(tokenizer, messages[:-1])
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(list(messages), tokenize=False)
        if full.startswith(prompt):
            return full[len(prompt):]
    eos = tokenizer.eos_token or ""
    return messages[-1]["content"] + eos


@dataclass
class EncodedSplit:
    """A tokenised split, right-padded.

    input_ids: (N, T) long; attention_mask: (N, T) long;
    supervised: (N, T) bool, the prediction positions the objectives use.
    """

    ids: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    supervised: torch.Tensor

    @property
    def n_supervised(self) -> int:
        return int(self.supervised.sum())

    def offsets(self) -> torch.Tensor:
        """(N + 1,) start row of each example in position-flattened (P, ...) artifacts."""
        import torch

        counts = self.supervised.sum(dim=1)
        return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    def to(self, device: str | torch.device) -> "EncodedSplit":
        """The same split with its tensors on ``device`` (where the model computes)."""
        return EncodedSplit(self.ids, self.input_ids.to(device), self.attention_mask.to(device),
                            self.supervised.to(device))

    def tensors(self) -> dict[str, torch.Tensor]:
        import torch

        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "supervised": self.supervised.to(torch.uint8),
        }


def encode(
    tokenizer,
    records: Sequence[dict[str, Any]],
    max_length: int,
    supervise: str = "answer",
) -> EncodedSplit:
    """Tokenise records; prompts are cut from the left so the answer survives."""
    import torch

    if supervise not in SUPERVISE_MODES:
        raise PipelineError(f"unknown supervise mode {supervise!r}", f"set data.supervise to one of {SUPERVISE_MODES}")
    if max_length < 4:
        raise PipelineError(f"max_length {max_length} is too small", "set data.max_length to at least 4")
    rows: list[tuple[list[int], list[bool]]] = []
    ids: list[str] = []
    for r in records:
        msgs = r["messages"]
        prompt_ids = tokenizer(render_prompt(tokenizer, msgs[:-1]), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(_answer_suffix(tokenizer, msgs), add_special_tokens=False)["input_ids"]
        answer_ids = answer_ids[: max_length - 1]
        prompt_ids = prompt_ids[-(max_length - len(answer_ids)):]
        tokens = prompt_ids + answer_ids
        is_answer = [False] * len(prompt_ids) + [True] * len(answer_ids)
        if supervise == "all":
            predicts = [True] * (len(tokens) - 1) + [False]
        else:
            predicts = is_answer[1:] + [False]
        rows.append((tokens, predicts))
        ids.append(str(r["id"]))
    if not rows:
        raise PipelineError("the split has no records", "check the data stage's split sizes in params.yaml")
    width = max(len(t) for t, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    supervised = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (tokens, predicts) in enumerate(rows):
        input_ids[i, : len(tokens)] = torch.tensor(tokens)
        attention[i, : len(tokens)] = 1
        supervised[i, : len(tokens)] = torch.tensor(predicts)
    return EncodedSplit(ids, input_ids, attention, supervised)


def encoded_from_tensors(ids: list[str], tensors: dict[str, torch.Tensor]) -> EncodedSplit:
    return EncodedSplit(ids, tensors["input_ids"], tensors["attention_mask"], tensors["supervised"].bool())


def batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def length_batches(attention_mask: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Example indices in batches of similar length (longest first, ties in split order), so a
    batch trimmed to its longest example computes little padding: about a fifth of GSM8K's
    tokens at max_length 256 are padding in split-order batches, almost none sorted."""
    import torch

    lengths = attention_mask.sum(dim=1)
    order = torch.sort(lengths, descending=True, stable=True).indices
    return [order[sl] for sl in batches(len(order), batch_size)]


def encode_split(tokenizer, task_dir: str | os.PathLike, split: str, data_params: dict) -> EncodedSplit:
    """Read and tokenise one split with the data block of params.yaml (max_length, supervise)."""
    return encode(tokenizer, load_split(task_dir, split),
                  int(data_params.get("max_length", 512)), str(data_params.get("supervise", "answer")))
