"""stages/data.py: params in, four JSONL splits and a card out, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.data import SPLITS, read_jsonl
from pipeline.core.errors import PipelineError

REPO = Path(__file__).resolve().parent.parent


def stage():
    from stages import data

    return data


def test_data_stage_writes_splits_and_card(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 3\ntasks_config:\n  toy: {attribution: 2, transfer: 5, validation: 3, evaluation: 4}\n")
    counts = stage().run("toy", params, tmp_path / "tasks")
    assert counts == {"attribution": 2, "transfer": 5, "validation": 3, "evaluation": 4}
    out = tmp_path / "tasks" / "toy"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{s}.jsonl" for s in SPLITS] + ["card.json"])
    assert len(read_jsonl(out / "transfer.jsonl")) == 5
    assert json.loads((out / "card.json").read_text())["seed"] == 3
    assert not [p for p in (tmp_path / "tasks").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_data_stage_missing_block_fails_clearly_and_writes_nothing(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\ntasks_config: {}\n")
    with pytest.raises(PipelineError, match="tasks_config.toy"):
        stage().run("toy", params, tmp_path / "tasks")
    assert not (tmp_path / "tasks").exists()


def test_data_stage_failing_builder_leaves_no_output(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\ntasks_config:\n  toy: {attribution: 9000, transfer: 9000, validation: 0, evaluation: 1}\n")
    with pytest.raises(PipelineError, match="toy task has"):
        stage().run("toy", params, tmp_path / "tasks")
    assert not (tmp_path / "tasks" / "toy").exists()
