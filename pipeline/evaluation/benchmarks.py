"""The four benchmark protocols: prompts, decoding, answer parsing, scoring, records.

All prompts are the task record's messages except the last (the reference answer),
rendered with the model's chat template (zero-shot, as SemAlign v1 and LaTen). Per
benchmark:

* ``mmlu``: accuracy; the argmax over the log-likelihoods of the letters A-D after the
  prompt (:mod:`pipeline.evaluation.multiple_choice`); micro-average, per-subject numbers kept.
  The chat template's assistant prefix ends with a newline, after which a model writes
  "A", not " A"; so the letters are scored without a leading space. With an
  ``answer_prefix`` such as "The answer is:" (Open-Instruct's chat variant) they get the
  space, as after "Answer:" in the harness.
* ``gsm8k``: greedy chain-of-thought generation; exact match of the final number,
  "flexible" (last number) and "strict" ("The answer is N" / "#### N"); the flexible one
  is the headline number.
* ``humaneval`` / ``mbpp``: pass@1 of the greedy answer; the program (see
  :mod:`pipeline.evaluation.answers`) is judged by the benchmark's tests with
  :meth:`pipeline.evaluation.sandbox.Sandbox.check` (the tests run in a process of their own, so a
  program cannot forge a pass). The metrics carry the sandbox's isolation mode.

Every number comes with n and a Wilson 95% interval; every sample's prompt, output,
extracted answer and verdict is returned for samples.jsonl.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from pipeline.core.data import render_prompt
from pipeline.core.errors import PipelineError
from pipeline.evaluation.answers import extract_code, gsm8k_flexible, gsm8k_strict, humaneval_program, humaneval_tests, \
    mbpp_program, normalize_number
from pipeline.evaluation.generation import GenerationRun, generate
from pipeline.evaluation.multiple_choice import choice_logprobs
from pipeline.compute.parallel import SINGLE, Shard
from pipeline.evaluation.stats import proportion

# ``toy`` (pipeline/tasks/toy.py: arithmetic with a numeric answer) is scored like GSM8K; it
# exists so that the tiny end-to-end tests exercise evaluation and the report too.
BENCHMARKS = ("mmlu", "gsm8k", "humaneval", "mbpp", "toy")
PRIMARY = {"mmlu": "acc", "gsm8k": "em_flexible", "humaneval": "pass_at_1", "mbpp": "pass_at_1", "toy": "em_flexible"}
REQUIRED_META = {
    "toy": ("answer",),
    "mmlu": ("subject", "choices", "answer"),
    "gsm8k": ("answer",),
    "humaneval": ("task_id", "prompt", "entry_point", "test"),
    "mbpp": ("name", "prompt", "tests", "entry_point"),
}
LETTERS = "ABCD"


def primary_verdict(benchmark: str, sample: dict[str, Any]) -> bool:
    """Whether one samples.jsonl record counts as right for the benchmark's headline metric
    (``PRIMARY``): GSM8K-style records carry both answer extractions, the headline is "flexible"."""
    correct = sample["correct"]
    return bool(correct["flexible"] if isinstance(correct, dict) else correct)


@dataclass
class Settings:
    """One benchmark's evaluation settings (its block of ``evaluation`` in params.yaml)."""

    batch_size: int = 8
    limit: int | None = None  # first N evaluation records; None = all
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    stop_after_code_block: bool = True  # code benchmarks: stop after the first ```...``` block
    max_prompt_tokens: int | None = None
    answer_prefix: str = ""  # mmlu: text after the assistant prefix, before the letter
    sandbox_workers: int = 1

    @classmethod
    def from_params(cls, block: dict[str, Any], batch_size: int) -> "Settings":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(block) - known)
        if unknown:
            raise PipelineError(f"unknown evaluation setting(s) {unknown}", f"use only {sorted(known)}")
        s = cls(**{"batch_size": batch_size, **block})
        if s.limit is not None and s.limit < 1:
            raise PipelineError(f"evaluation limit {s.limit} must be at least 1 (or null for all)",
                                "fix the benchmark's limit in params.yaml")
        return s

    @classmethod
    def for_benchmark(cls, block: dict[str, Any], benchmark: str) -> "Settings":
        """``evaluation.benchmarks.BENCHMARK`` of params.yaml, with the block's batch size and
        sandbox workers where the benchmark does not set its own."""
        per = (block.get("benchmarks") or {}).get(benchmark) or {}
        if "batch_size" not in per and "batch_size" in block:
            per = {**per, "batch_size": block["batch_size"]}
        workers = (block.get("sandbox") or {}).get("workers", 1)
        return cls.from_params({**per, "sandbox_workers": workers}, per.get("batch_size", 8))


def summary_line(benchmark: str, key: str, metrics: dict[str, float | int]) -> str:
    """The evaluate stage's closing line: the primary metric with its interval and n."""
    m = PRIMARY[benchmark]
    return (f"{benchmark} {key}: {m} {metrics[m]:.2f}% "
            f"[{metrics[m + '_ci95_low']:.2f}, {metrics[m + '_ci95_high']:.2f}] n={metrics['n']}")


@dataclass
class Evaluation:
    metrics: dict[str, float | int]  # flat: PRIMARY metric and friends, each with its interval, and n
    samples: list[dict[str, Any]]
    details: dict[str, Any]


def _meta(record: dict[str, Any]) -> dict[str, Any]:
    meta = record.get("meta", {})
    return json.loads(meta) if isinstance(meta, str) else meta


def check_records(benchmark: str, records: Sequence[dict[str, Any]], where: str) -> None:
    """Fail early, naming the record, if the task data lacks what the protocol needs."""
    if benchmark not in BENCHMARKS:
        raise PipelineError(f"unknown benchmark {benchmark!r}", f"use one of {', '.join(BENCHMARKS)}")
    if not records:
        raise PipelineError(f"{where} has no records", "re-run the data stage with a non-empty evaluation split")
    for r in records:
        meta = _meta(r)
        missing = [k for k in REQUIRED_META[benchmark] if k not in meta]
        if missing:
            raise PipelineError(f"{where}: record {r.get('id', '?')} lacks meta {missing} needed by {benchmark}",
                                f"rebuild the {benchmark} task with the current task builder")
        if benchmark == "mmlu" and (meta["answer"] not in LETTERS or len(meta["choices"]) != 4):
            raise PipelineError(f"{where}: record {r.get('id', '?')} needs 4 choices and an answer in A-D",
                                "rebuild the mmlu task")


def select(records: Sequence[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` records (the data stage already fixed a seeded order)."""
    return list(records[:limit] if limit else records)


def mmlu_choices(answer_prefix: str) -> list[str]:
    """Letter continuations: "A" right after the template's newline, " A" after prose."""
    sep = " " if answer_prefix and not answer_prefix[-1].isspace() else ""
    return [sep + letter for letter in LETTERS]


def _prompts(tokenizer, records: Sequence[dict[str, Any]]) -> list[str]:
    return [render_prompt(tokenizer, r["messages"][:-1]) for r in records]


def _gen_details(run: GenerationRun) -> dict[str, Any]:
    finishes: dict[str, int] = defaultdict(int)
    for g in run.outputs:
        finishes[g.finish] += 1
    return {"new_tokens": run.new_tokens, "seconds": round(run.seconds, 2),
            "tokens_per_second": round(run.tokens_per_second, 2), "finish": dict(finishes),
            "truncated_prompts": sum(g.truncated_prompt for g in run.outputs)}


def evaluate_mmlu(model, tokenizer, records, settings: Settings, progress: bool = True,
                  shard: Shard = SINGLE) -> Evaluation | None:
    prompts = [p + settings.answer_prefix for p in _prompts(tokenizer, records)]
    choices = mmlu_choices(settings.answer_prefix)
    scores = choice_logprobs(model, tokenizer, prompts, choices, settings.batch_size, progress, desc="mmlu",
                             shard=shard)
    if scores is None:
        return None  # the main process scores every process's share
    samples, by_subject = [], defaultdict(lambda: [0, 0])
    for r, prompt, row in zip(records, prompts, scores.tolist()):
        meta = _meta(r)
        pred = LETTERS[max(range(4), key=lambda j: row[j])]
        correct = pred == meta["answer"]
        by_subject[meta["subject"]][0] += correct
        by_subject[meta["subject"]][1] += 1
        samples.append({"id": r["id"], "subject": meta["subject"], "prompt": prompt,
                        "logprobs": dict(zip(LETTERS, [round(v, 4) for v in row])),
                        "extracted": pred, "gold": meta["answer"], "correct": correct})
    k = sum(s["correct"] for s in samples)
    metrics = {**proportion(k, len(samples), "acc"), "n": len(samples)}
    subjects = {s: {**proportion(c, n, "acc"), "n": n} for s, (c, n) in sorted(by_subject.items())}
    return Evaluation(metrics, samples, {"choices": choices, "subjects": subjects})


def evaluate_gsm8k(model, tokenizer, records, settings: Settings, progress: bool = True,
                   shard: Shard = SINGLE) -> Evaluation | None:
    prompts = _prompts(tokenizer, records)
    run = generate(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size, settings.stop,
                   False, settings.max_prompt_tokens, progress, desc="gsm8k", shard=shard)
    if run is None:
        return None  # the main process scores every process's share
    samples = []
    for r, prompt, g in zip(records, prompts, run.outputs):
        gold = normalize_number(str(_meta(r)["answer"]))
        flexible, strict = gsm8k_flexible(g.text), gsm8k_strict(g.text)
        samples.append({"id": r["id"], "prompt": prompt, "output": g.text, "finish": g.finish,
                        "new_tokens": g.new_tokens, "extracted": {"flexible": flexible, "strict": strict},
                        "gold": gold, "correct": {"flexible": flexible == gold, "strict": strict == gold}})
    n = len(samples)
    metrics = {**proportion(sum(s["correct"]["flexible"] for s in samples), n, "em_flexible"),
               **proportion(sum(s["correct"]["strict"] for s in samples), n, "em_strict"), "n": n}
    return Evaluation(metrics, samples, {"generation": _gen_details(run)})


def evaluate_code(benchmark: str, model, tokenizer, records, settings: Settings, sandbox,
                  progress: bool = True, shard: Shard = SINGLE) -> Evaluation | None:
    from tqdm.auto import tqdm

    prompts = _prompts(tokenizer, records)
    run = generate(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size, settings.stop,
                   settings.stop_after_code_block, settings.max_prompt_tokens, progress, desc=benchmark, shard=shard)
    if run is None:
        return None  # the main process runs every program in the sandbox and scores them
    extracted, programs, cases = [], [], []
    for r, g in zip(records, run.outputs):
        meta = _meta(r)
        code = extract_code(g.text, meta["prompt"], meta["entry_point"])
        extracted.append(code)
        # The whole program is kept for audits; the verdict runs code and tests apart.
        programs.append(humaneval_program(code.code, meta["test"], meta["entry_point"]) if benchmark == "humaneval"
                        else mbpp_program(code.code, meta["tests"]))
        tests = humaneval_tests(meta["test"], meta["entry_point"]) if benchmark == "humaneval" else meta["tests"]
        cases.append((code.code, tests, meta["entry_point"]))
    verdicts = []
    with tqdm(total=len(cases), desc=f"{benchmark} tests", unit="program", disable=not progress) as bar:
        for i in range(0, len(cases), max(1, settings.sandbox_workers)):
            chunk = cases[i: i + max(1, settings.sandbox_workers)]
            verdicts.extend(sandbox.check_many(chunk, workers=settings.sandbox_workers))
            bar.update(len(chunk))
    samples = []
    for r, prompt, g, code, program, v in zip(records, prompts, run.outputs, extracted, programs, verdicts):
        samples.append({"id": r["id"], "prompt": prompt, "output": g.text, "finish": g.finish,
                        "new_tokens": g.new_tokens,
                        "extracted": {"code": code.code, "mode": code.mode, "notes": code.notes},
                        "program": program, "verdict": {k: v.record()[k] for k in
                                                        ("status", "reason", "returncode", "seconds", "stdout",
                                                         "stderr")},
                        "correct": v.passed})
    k = sum(s["correct"] for s in samples)
    statuses: dict[str, int] = defaultdict(int)
    for v in verdicts:
        statuses[v.status] += 1
    # The isolation travels with the score, so the results table can show what ran it.
    metrics = {**proportion(k, len(samples), "pass_at_1"), "n": len(samples), "sandbox_isolation": sandbox.mode}
    return Evaluation(metrics, samples, {"generation": _gen_details(run), "sandbox": sandbox.describe(),
                                         "verdicts": dict(statuses)})


def evaluate(benchmark: str, model, tokenizer, records, settings: Settings, sandbox=None,
             progress: bool = True, shard: Shard = SINGLE) -> Evaluation | None:
    """Run one benchmark on already-selected, already-checked records.

    Under several processes each runs the model on its share of the batches; the main process
    gets the whole evaluation, the others None."""
    if benchmark == "mmlu":
        result = evaluate_mmlu(model, tokenizer, records, settings, progress, shard)
    elif benchmark in ("gsm8k", "toy"):
        result = evaluate_gsm8k(model, tokenizer, records, settings, progress, shard)
    elif benchmark in ("humaneval", "mbpp"):
        if sandbox is None:
            raise PipelineError(f"{benchmark} needs a code sandbox", "pass a pipeline.evaluation.sandbox.Sandbox")
        result = evaluate_code(benchmark, model, tokenizer, records, settings, sandbox, progress, shard)
    else:
        raise PipelineError(f"unknown benchmark {benchmark!r}", f"use one of {', '.join(BENCHMARKS)}")
    if result is None:
        return None
    result.details.update({"benchmark": benchmark, "primary_metric": PRIMARY[benchmark],
                           "settings": asdict(settings)})
    return result
