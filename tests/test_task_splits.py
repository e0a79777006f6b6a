"""The split rule shared by the real tasks: deterministic, disjoint, stable, loud when short."""

from __future__ import annotations

import pytest

from pipeline.core.errors import PipelineError
from pipeline.tasks.splits import allocate, check_disjoint, normalise, seeded_order, split_sizes

SIZES = {"attribution": 3, "transfer": 5, "validation": 2, "evaluation": 4}


def items(n: int, strata: int = 1) -> list[dict]:
    return [{"q": f"Question {i}?", "s": f"subject{i % strata}"} for i in range(n)]


def key(item: dict) -> str:
    return normalise(item["q"])


def owners(parts: dict[str, list[dict]]) -> dict[str, set[str]]:
    return {split: {key(x) for x in chosen} for split, chosen in parts.items()}


def assert_disjoint(parts: dict[str, list[dict]]) -> None:
    sets = owners(parts)
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b, sets[a] & sets[b])


def test_normalise_lowercases_and_collapses_whitespace():
    assert normalise("  What IS\n\t 2 +  2?  ") == "what is 2 + 2?"


def test_sizes_validated_and_zero_evaluation_means_all():
    assert split_sizes({"attribution": 1, "transfer": 2, "validation": 3, "evaluation": 0}, "t")["evaluation"] is None
    assert split_sizes({"attribution": 1, "transfer": 2, "validation": 3, "evaluation": None}, "t")["evaluation"] is None
    with pytest.raises(PipelineError, match="tasks_config.t.transfer") as err:
        split_sizes({"transfer": -1}, "t")
    assert "non-negative integer" in err.value.fix
    with pytest.raises(PipelineError):
        split_sizes({"transfer": "64"}, "t")


def test_allocation_is_deterministic_and_seed_dependent():
    pool = items(50)
    a = allocate(pool, pool, SIZES, seed=1, salt="x", key=key, task="t")
    b = allocate(pool, pool, SIZES, seed=1, salt="x", key=key, task="t")
    c = allocate(pool, pool, SIZES, seed=2, salt="x", key=key, task="t")
    assert a == b
    assert a != c
    assert {s: len(v) for s, v in a.items()} == SIZES


def test_duplicated_questions_never_straddle_splits():
    # Every question appears three times with different case/whitespace: groups must stay whole.
    pool = [{"q": q, "s": "x"} for i in range(20) for q in (f"Q {i}", f"q  {i}", f"Q\n{i}")]
    parts = allocate(pool, pool, SIZES, seed=0, salt="x", key=key, task="t")
    assert_disjoint(parts)
    everything = allocate(pool, pool, split_sizes({**SIZES, "evaluation": None}, "t"), seed=0, salt="x", key=key, task="t")
    assert_disjoint(everything)


def test_evaluation_is_stable_when_training_sizes_change():
    pool = items(80, strata=4)
    small = allocate(pool, pool, SIZES, seed=3, salt="x", key=key, task="t", stratum=lambda x: x["s"])
    big = allocate(pool, pool, {**SIZES, "transfer": 20}, seed=3, salt="x", key=key, task="t",
                   stratum=lambda x: x["s"])
    assert small["evaluation"] == big["evaluation"]
    assert small["attribution"] == big["attribution"] and small["validation"] == big["validation"]
    assert big["transfer"][:5] == small["transfer"]


def test_all_remaining_evaluation_takes_the_rest():
    pool = items(30)
    parts = allocate(pool, pool, split_sizes({**SIZES, "evaluation": 0}, "t"), seed=0, salt="x", key=key, task="t")
    assert len(parts["evaluation"]) == 30 - 3 - 5 - 2
    assert_disjoint(parts)


def test_strata_are_covered_round_robin():
    pool = items(40, strata=4)
    order = seeded_order(pool, 0, "x", stratum=lambda x: x["s"])
    assert {x["s"] for x in order[:4]} == {f"subject{i}" for i in range(4)}
    back = seeded_order(pool, 0, "x", stratum=lambda x: x["s"], from_back=True)
    assert {x["s"] for x in back[:4]} == {f"subject{i}" for i in range(4)}
    assert sorted(map(id, order)) == sorted(map(id, back))


def test_too_small_pool_fails_before_work():
    pool = items(10)
    with pytest.raises(PipelineError, match="not enough distinct questions") as err:
        allocate(pool, pool, SIZES, seed=0, salt="x", key=key, task="demo")
    assert "tasks_config.demo" in err.value.fix


def test_check_disjoint_catches_a_leak():
    rec = {"id": "a", "q": "Same question"}
    with pytest.raises(PipelineError, match="both"):
        check_disjoint({"transfer": [rec], "evaluation": [{**rec, "q": "same  QUESTION"}]}, lambda r: r["q"], "t")
