"""Deterministic, disjoint splits: sizes, text normalisation and the allocation rule.

The rule every real task uses:

1. Each pool (the evaluation pool, and the training pool, which may be the same list) is put
   in one seeded order. With strata (MMLU subjects) the order is a round-robin over the
   strata, each shuffled, so every prefix covers the subjects evenly.
2. ``evaluation`` takes items from the *front* of the evaluation pool's order; the training
   splits take items from the *back* of the training pool's order, in the order
   attribution, validation, transfer. So the evaluation set does not move when a training
   size changes, and attribution/validation do not move when the transfer size changes.
3. An item is skipped when its key (normalised question text) is already used by another
   split, so duplicated questions never straddle two splits.
4. ``evaluation: 0`` (or null) means "all remaining": the training splits are drawn first
   and evaluation gets every evaluation-pool item whose key they do not use.
"""

from __future__ import annotations

import random
from typing import Callable, Hashable, Sequence, TypeVar

from pipeline.core.errors import PipelineError

T = TypeVar("T")
TRAIN_SPLITS = ("attribution", "validation", "transfer")  # drawing order, see the module docstring
ALL = None  # evaluation size meaning "all remaining"


def normalise(text: str) -> str:
    """Lowercase, whitespace collapsed: the form in which splits must not share a question."""
    return " ".join(text.lower().split())


def split_sizes(cfg: dict, task: str) -> dict[str, int | None]:
    """Validated sizes from a task config; evaluation None means all remaining."""
    sizes: dict[str, int | None] = {}
    for split in ("attribution", "transfer", "validation", "evaluation"):
        value = cfg.get(split, 0)
        if split == "evaluation" and (value is None or value == 0):
            sizes[split] = ALL
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PipelineError(f"tasks_config.{task}.{split} is {value!r}",
                                "give a non-negative integer (evaluation: 0 or null means all remaining)")
        sizes[split] = value
    return sizes


def seeded_order(items: Sequence[T], seed: int, salt: str,
                 stratum: Callable[[T], Hashable] | None = None, from_back: bool = False) -> list[T]:
    """One deterministic order of ``items``; round-robin over shuffled strata if given.

    ``from_back`` gives the order the training splits draw from: the same shuffle read from
    the other end (per stratum, keeping the round-robin, so training covers the strata as
    evenly as evaluation does, from the items evaluation would take last).
    """
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
    rng = random.Random(f"{salt}:{seed}")
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(stratum(item) if stratum else "", []).append(item)
    names = sorted(groups, key=str)
    rng.shuffle(names)
    for name in names:
        rng.shuffle(groups[name])
        if from_back:
            groups[name].reverse()
    order: list[T] = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        order.extend(groups[name][i] for name in names if i < len(groups[name]))
    return order


def _take(order: Sequence[T], n: int | None, key: Callable[[T], str], taken: dict[str, str],
          split: str, taken_ids: set[int]) -> list[T]:
    out: list[T] = []
    for item in order:
        if n is not None and len(out) == n:
            break
        k = key(item)
        if id(item) in taken_ids or taken.get(k, split) != split:
            continue
        taken[k] = split
        taken_ids.add(id(item))
        out.append(item)
    return out


def allocate(eval_pool: Sequence[T], train_pool: Sequence[T], sizes: dict[str, int | None],
             seed: int, salt: str, key: Callable[[T], str], task: str,
             stratum: Callable[[T], Hashable] | None = None,
             train_salt: str | None = None) -> dict[str, list[T]]:
    """Split the pools by the module's rule; fail before any work if a pool is too small.

    ``train_salt`` orders the training pool with another task's salt, so that a task that
    trains on another benchmark's problems takes them from the end that benchmark's own
    evaluation split does not use.
    """
    front = seeded_order(eval_pool, seed, salt, stratum)
    back = seeded_order(train_pool, seed, train_salt or salt, stratum, from_back=True)
    taken: dict[str, str] = {}  # normalised key -> split that owns it
    taken_ids: set[int] = set()
    out: dict[str, list[T]] = {}
    if sizes["evaluation"] is not ALL:
        out["evaluation"] = _take(front, sizes["evaluation"], key, taken, "evaluation", taken_ids)
    for split in TRAIN_SPLITS:
        out[split] = _take(back, sizes[split], key, taken, split, taken_ids)
    if sizes["evaluation"] is ALL:
        out["evaluation"] = _take(front, None, key, taken, "evaluation", taken_ids)
    short = {s: (len(out[s]), sizes[s]) for s in out if sizes[s] is not ALL and len(out[s]) < sizes[s]}
    if short or not out["evaluation"]:
        detail = ", ".join(f"{s} got {got} of {want}" for s, (got, want) in short.items()) or "evaluation is empty"
        raise PipelineError(
            f"task {task}: not enough distinct questions ({detail}; evaluation pool {len(eval_pool)}, "
            f"training pool {len(train_pool)})",
            f"lower the split sizes in params.yaml tasks_config.{task}",
        )
    return {s: out[s] for s in ("attribution", "transfer", "validation", "evaluation")}


def check_disjoint(splits: dict[str, list[dict]], question: Callable[[dict], str], task: str) -> None:
    """Belt and braces: no normalised question text may appear in two splits."""
    owner: dict[str, str] = {}
    for split, records in splits.items():
        for r in records:
            k = normalise(question(r))
            if owner.setdefault(k, split) != split:
                raise PipelineError(f"task {task}: a question is in both {owner[k]} and {split}: {k[:80]!r}",
                                    "this is a bug in the task builder; please report it")
