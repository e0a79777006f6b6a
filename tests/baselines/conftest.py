"""Baseline fixtures: a tiny project root with models, toy task splits and cached source outputs."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from source_cache_writer import write_source_cache

from pipeline.core.data import write_jsonl
from pipeline.tasks import toy
from pipeline.core.tiny import write_pair

TASK = "toy"
MAX_LENGTH = 64
SIZES = {"attribution": 8, "transfer": 16, "validation": 8, "evaluation": 0}

torch.set_num_threads(2)


TRAIN = {"epochs": 6, "max_steps": 6, "batch_size": 16, "lr": 1e-2, "warmup_ratio": 0.0, "grad_clip": 1.0}


def baseline_params() -> dict:
    """The params.yaml blocks a baseline run reads, sized for seconds-long runs on the tiny pair."""
    return {"tasks": [TASK], "seeds": [0, 1], "data": {"max_length": MAX_LENGTH, "supervise": "answer"}, "baselines": {
        "seeds": [0, 1],
        "save_dtype": "auto",
        "lora": {"r": 16, "alpha": 16, "dropout": 0.05, "targets": ["q", "k", "v", "o", "gate", "up", "down"]},
        "enabled": {m: [TASK] for m in ("sft", "kd", "hidden_kd", "seeking", "laten")},
        "sft": {"train": dict(TRAIN)},
        "kd": {"train": dict(TRAIN), "temperature": 2.0, "ce_weight": 0.0},
        "hidden_kd": {"train": dict(TRAIN), "loss": "cosine", "hidden_weight": 1.0, "kl_weight": 1.0},
        "seeking": {"train": dict(TRAIN), "seed_examples": 8},
        "laten": {"train": dict(TRAIN, weight_decay=0.05), "rate": 0.1, "rates": [0.1, 0.3], "extract_examples": 4,
                  "align_examples": 16, "val_examples": 8, "eval_every": 3},
    }}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """models/{source,target}, data/tasks/toy/*.jsonl, artifacts/toy/source/{transfer,validation} (K = V)."""
    root = tmp_path_factory.mktemp("project")
    source, _ = write_pair(root / "models")
    splits = toy.build(SIZES, seed=0).splits
    for name, records in splits.items():
        if records:
            write_jsonl(root / "data" / "tasks" / TASK / f"{name}.jsonl", records)
    for split in ("transfer", "validation"):
        write_source_cache(source, splits[split], root / "artifacts" / TASK / "source" / split, MAX_LENGTH,
                           top_k=10_000)  # K = V
    return root


@pytest.fixture()
def project(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny root (a test may delete or add files)."""
    root = tmp_path / "project"
    shutil.copytree(tiny_root, root)
    return root


@pytest.fixture()
def params() -> dict:
    return copy.deepcopy(baseline_params())
