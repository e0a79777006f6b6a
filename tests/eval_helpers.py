"""Shared helpers for the evaluation tests: a tiny random model and task records."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core.tiny import write_pair


def tiny_model_dir(root: Path) -> Path:
    """A tiny random qwen2 causal LM with a chat template (the pair's target).

    Also pins torch to one thread: a model this small gains nothing from more, and on a
    busy 2-core machine intra-op threads spin against each other (measured 9 ms vs 750 ms
    per forward pass).
    """
    torch.set_num_threads(1)
    _, target = write_pair(root)
    return target


def record(rid: str, task: str, question: str, answer: str, meta: dict) -> dict:
    return {"id": rid, "task": task, "meta": meta,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def mmlu_record(i: int, subject: str, gold: str) -> dict:
    q = (f"The following is a multiple choice question about {subject}.\n\nQuestion {i}: which?\n"
         "A. one\nB. two\nC. three\nD. four\nAnswer with the letter of the correct choice.")
    return record(f"mmlu-{i}", "mmlu", q, gold, {"subject": subject, "choices": ["one", "two", "three", "four"],
                                                 "answer": gold})


ADD_PROMPT = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def humaneval_record(i: int) -> dict:
    return record(f"humaneval-{i}", "humaneval", "Complete the function:\n" + ADD_PROMPT, ADD_PROMPT + "    return a + b\n",
                  {"task_id": f"HumanEval/{i}", "prompt": ADD_PROMPT, "entry_point": "add", "test": ADD_TEST})


def mbpp_record(i: int) -> dict:
    prompt = 'def is_even(n: int) -> bool:\n    """\n\tReturn True if n is even.\n\t"""\n'
    tests = ("def check(candidate):\n    assert candidate(2) == True\n    assert candidate(3) == False\n\n"
             "def test_check():\n    check(is_even)\n\ntest_check()\n")
    return record(f"mbpp-{i}", "mbpp", "Write is_even:\n" + prompt, prompt + "    return n % 2 == 0\n",
                  {"name": f"mbpp_{i}_is_even", "prompt": prompt, "tests": tests, "entry_point": "is_even"})


def gsm8k_record(i: int, answer: str) -> dict:
    return record(f"gsm8k-{i}", "gsm8k", f"Tom has {i} apples. How many? Think step by step.",
                  f"He has {answer}. The answer is {answer}.", {"answer": answer})
