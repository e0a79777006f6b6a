"""The per-layer agreement stage's positions budget: a subset of rows, the same states."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.adapter import ModelAdapter
from pipeline.core.loading import load_model
from pipeline.evaluation.heldout import Agreement
from pipeline.method.quality import evenly_spaced, headline, target_states
from test_method import encoded


def test_evenly_spaced_rows():
    assert evenly_spaced(5, 10).tolist() == [0, 1, 2, 3, 4]
    rows = evenly_spaced(1000, 7)
    assert rows.tolist() == [0, 166, 333, 500, 666, 832, 999]  # round(k * 999 / 6); 832.5 rounds to even


def test_target_states_at_budgeted_rows_equal_the_full_states_at_those_rows(tiny_pair):
    """Rows spanning several batches (batch 2) give exactly the full computation's rows: rejects
    row offsets that restart at every batch or skip a batch's last example."""
    _, target = tiny_pair
    adapter = ModelAdapter(load_model(str(target), "float32"))
    enc = encoded(target)
    full = target_states(adapter, enc, batch_size=2, progress=False)
    rows = evenly_spaced(enc.n_supervised, 7)
    part = target_states(adapter, enc, batch_size=2, progress=False, rows=rows)
    assert len(rows) == 7 and rows.max() > enc.supervised[:2].sum()  # the subset reaches later batches
    for h_full, h_part in zip(full, part):
        torch.testing.assert_close(h_part, h_full[rows])


def test_headline_is_the_kl_reduction_with_its_interval():
    """Target KL 10/8, SemAlign 5/8 on the same two examples: a reduction of +0.625 whose interval
    is the negated interval of the difference (rejects SemAlign - target, and a reduction whose
    bounds are not swapped when negated)."""
    def rec(kl, top1):
        return Agreement(torch.tensor(kl, dtype=torch.float64), torch.tensor(top1, dtype=torch.float64),
                         torch.tensor([2, 6]))

    h = headline(rec([4.0, 6.0], [1.0, 3.0]), rec([2.0, 3.0], [2.0, 6.0]))
    assert h["kl_reduction"] == pytest.approx(0.625) and h["top1_gain"] == pytest.approx(0.5)
    assert h["kl_reduction_low"] <= 0.625 <= h["kl_reduction_high"]
    assert (h["target_kl"], h["semalign_kl"]) == (pytest.approx(1.25), pytest.approx(0.625))
