"""Evaluator speed: batched generation vs a per-prompt ``generate`` loop, and eval time.

    python -m benchmarks.eval_throughput                      # tiny random model, seconds
    python -m benchmarks.eval_throughput --model models/target --tasks-dir data/tasks

1. Throughput: the same rendered chat prompts (GSM8K questions) are completed greedily
   (a) by :func:`pipeline.evaluation.generation.generate` (sorted, left-padded batches, KV cache) and
   (b) by one plain ``model.generate`` call per prompt with the same greedy settings.
   Tokens/s counts generated tokens up to each row's end-of-sequence; the outputs of (a)
   and (b) are compared, so a speed-up never hides a correctness change.
2. Evaluation time: each benchmark's protocol on a small subset (real task records with
   ``--tasks-dir``, else a few synthetic ones), including the sandbox for code.

One run, no repetitions: numbers on a shared CPU machine move by 10-20% between runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from pipeline.evaluation.benchmarks import PRIMARY, Settings, check_records, evaluate, select
from pipeline.core.data import read_jsonl, render_prompt
from pipeline.evaluation.generation import eos_ids, generate, greedy_config
from pipeline.core.loading import load_model, load_tokenizer
from pipeline.evaluation.sandbox import Sandbox

_QUESTIONS = [
    "Tom has 3 apples and buys 4 more bags of 6 apples each. How many apples does he have?",
    "A train travels 60 km per hour for 2.5 hours. How far does it go?",
    "Sara reads 12 pages a day. How many days does she need for a 180-page book?",
    "A shirt costs $25 and is 20% off. What is the price?",
    "There are 7 rows of 9 chairs and 5 chairs are broken. How many chairs can be used?",
    "Ben saves $15 a week. How many weeks until he has $240?",
    "A recipe needs 3 eggs per cake. How many eggs for 14 cakes?",
    "A box holds 24 pencils. How many boxes are needed for 500 pencils?",
]
_INSTRUCTION = "Solve this math problem step by step. Finish with a line of the form \"The answer is N.\"\n\n"


def _synthetic(benchmark: str, n: int) -> list[dict]:
    """A few well-formed records per benchmark (only for speed, not for scores)."""
    out = []
    for i in range(n):
        if benchmark == "gsm8k":
            q, meta, a = _INSTRUCTION + _QUESTIONS[i % len(_QUESTIONS)], {"answer": "1"}, "The answer is 1."
        elif benchmark == "mmlu":
            q = (f"The following is a multiple choice question about arithmetic.\n\nWhat is {i} + 2?\n"
                 f"A. {i + 1}\nB. {i + 2}\nC. {i + 3}\nD. {i + 4}\nAnswer with the letter of the correct option.")
            meta, a = {"subject": "arithmetic", "choices": [str(i + k) for k in (1, 2, 3, 4)], "answer": "B"}, "B"
        else:
            prompt = f'def add_{i}(a: int, b: int) -> int:\n    """Return a + b + {i}."""\n'
            q = f"Complete the following Python function in a single ```python code block.\n\n```python\n{prompt}```"
            test = f"def check(candidate):\n    assert candidate(1, 2) == {3 + i}\n"
            a = f"```python\n{prompt}    return a + b + {i}\n```"
            meta = ({"task_id": f"Synthetic/{i}", "prompt": prompt, "entry_point": f"add_{i}", "test": test}
                    if benchmark == "humaneval" else
                    {"name": f"synthetic_{i}", "prompt": prompt, "entry_point": f"add_{i}",
                     "tests": test + f"\ncheck(add_{i})\n"})
        out.append({"id": f"{benchmark}-{i}", "task": benchmark, "meta": meta,
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out


def _records(tasks_dir: str | None, benchmark: str, n: int) -> list[dict]:
    if tasks_dir:
        path = Path(tasks_dir) / benchmark / "evaluation.jsonl"
        records = read_jsonl(path)
        check_records(benchmark, records, str(path))
        return select(records, n)
    return _synthetic(benchmark, n)


def per_prompt_loop(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[list[str], int, float]:
    """The baseline: one unpadded ``generate`` call per prompt."""
    config = greedy_config(model, tokenizer, max_new_tokens)
    eos = set(eos_ids(model, tokenizer))
    texts, tokens, start = [], 0, time.monotonic()
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, generation_config=config)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        end = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
        tokens += end
        texts.append(tokenizer.decode(new[:end], skip_special_tokens=True))
    return texts, tokens, time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: a tiny random model)")
    ap.add_argument("--dtype", default=None, help="default: float32 for the tiny model, else bfloat16")
    ap.add_argument("--tasks-dir", help="real task records (data/tasks); default: synthetic ones")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--eval-limit", type=int, default=4, help="records per benchmark for the timing")
    ap.add_argument("--eval-max-new-tokens", type=int, default=None,
                    help="default: 64 for the tiny model (256 positions), else 256")
    ap.add_argument("--benchmarks", default="mmlu,gsm8k,humaneval,mbpp")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    scratch = None
    model_dir = args.model
    if model_dir is None:
        from pipeline.core.tiny import write_pair

        scratch = tempfile.TemporaryDirectory()
        model_dir = str(write_pair(scratch.name)[1])
    dtype = args.dtype or ("float32" if args.model is None else "bfloat16")
    t0 = time.monotonic()
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, dtype)
    report: dict = {"model": Path(model_dir).name if args.model else "tiny-random", "dtype": dtype,
                    "threads": torch.get_num_threads(), "load_seconds": round(time.monotonic() - t0, 1)}

    if not args.skip_throughput:
        records = _records(args.tasks_dir, "gsm8k", args.prompts)
        prompts = [render_prompt(tokenizer, r["messages"][:-1]) for r in records]
        batched = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, progress=False)
        texts, loop_tokens, loop_seconds = per_prompt_loop(model, tokenizer, prompts, args.max_new_tokens)
        same = sum(g.text == t for g, t in zip(batched.outputs, texts))
        report["throughput"] = {
            "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
            "batched_tokens": batched.new_tokens, "batched_seconds": round(batched.seconds, 2),
            "batched_tok_s": round(batched.tokens_per_second, 2),
            "loop_tokens": loop_tokens, "loop_seconds": round(loop_seconds, 2),
            "loop_tok_s": round(loop_tokens / loop_seconds, 2),
            "speedup": round(batched.tokens_per_second / (loop_tokens / loop_seconds), 2),
            "identical_outputs": f"{same}/{len(prompts)}"}
        print(f"throughput: batched {report['throughput']['batched_tok_s']} tok/s vs per-prompt loop "
              f"{report['throughput']['loop_tok_s']} tok/s -> x{report['throughput']['speedup']} "
              f"(identical outputs {same}/{len(prompts)})")

    sandbox = None
    timings = {}
    for bench in [b for b in args.benchmarks.split(",") if b]:
        records = _records(args.tasks_dir, bench, args.eval_limit)
        max_new = args.eval_max_new_tokens or (64 if args.model is None else 256)
        settings = Settings(batch_size=args.batch_size, max_new_tokens=max_new, sandbox_workers=2)
        if bench in ("humaneval", "mbpp") and sandbox is None:
            sandbox = Sandbox()
        start = time.monotonic()
        result = evaluate(bench, model, tokenizer, records, settings, sandbox, progress=False)
        seconds = time.monotonic() - start
        timings[bench] = {"n": len(records), "seconds": round(seconds, 1),
                          "seconds_per_sample": round(seconds / len(records), 2),
                          PRIMARY[bench]: result.metrics[PRIMARY[bench]],
                          **({"generation": result.details["generation"]} if "generation" in result.details else {})}
        print(f"eval {bench}: n={len(records)} {seconds:.1f}s ({seconds / len(records):.2f} s/sample) "
              f"{PRIMARY[bench]}={result.metrics[PRIMARY[bench]]}")
    report["evaluation"] = timings
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
