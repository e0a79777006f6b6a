"""Layer pairing: the paper's worked example and the one-per-layer guarantee."""

from __future__ import annotations

import pytest

from pipeline.core.errors import PipelineError
from pipeline.method.pairing import STRATEGIES, base_map, interpolate_map, pair_layers, validate_pairing

PAPER_40_TO_32 = [1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18, 20, 21, 22, 23, 25, 26, 27, 28, 30,
                  31, 32, 33, 35, 36, 37, 38, 40]


def test_floor_map_40_to_32_is_the_papers_table():
    assert base_map(40, 32) == PAPER_40_TO_32
    assert sorted(set(range(1, 41)) - set(PAPER_40_TO_32)) == [4, 9, 14, 19, 24, 29, 34, 39]


def test_interpolation_matches_the_worked_example():
    interp = interpolate_map(40, 32)
    assert (interp[0].a, interp[0].b, interp[0].lam) == (1, 2, 0.25)
    assert (interp[3].a, interp[3].lam) == (5, 0.0)
    assert [round(i.lam, 2) for i in interp[:4]] == [0.25, 0.5, 0.75, 0.0]
    assert (interp[-1].a, interp[-1].b, interp[-1].lam) == (39, 40, 1.0)


def test_critical_layers_move_to_the_papers_k_dagger():
    for l_star, k_dagger in {4: 4, 9: 8, 14: 12, 39: 32}.items():
        scores = [0.0] * 40
        scores[l_star - 1] = 1.0
        assert pair_layers("critical", 40, 32, scores)["pairs"][k_dagger - 1] == l_star


def test_attributed_picks_the_best_layer_of_each_window():
    scores = [0.0] * 40
    scores[3] = 5.0  # layer 4 lies in window (3, 5] of target block 4
    pairs = pair_layers("attributed", 40, 32, scores)["pairs"]
    assert pairs[3] == 4 and pairs[4] == 6


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", [(40, 32), (28, 24), (6, 4), (24, 24), (5, 2)])
def test_every_strategy_gives_one_source_layer_per_target_layer_in_order(strategy, shape):
    import random

    n_s, n_t = shape
    rng = random.Random(n_s * n_t)
    scores = [rng.random() for _ in range(n_s)]
    record = pair_layers(strategy, n_s, n_t, scores)
    pairs = record["pairs"]
    assert len(pairs) == n_t and all(1 <= p <= n_s for p in pairs)
    assert pairs == sorted(pairs)
    if strategy == "attributed":  # the partner lies in the window (base(k-1), base(k)]
        base = [0] + base_map(n_s, n_t)
        assert all(base[k] < pairs[k] <= base[k + 1] or pairs[k] == base[k + 1] for k in range(n_t))


def test_bad_pairings_are_refused():
    with pytest.raises(PipelineError, match="unknown pairing strategy"):
        pair_layers("nearest", 40, 32)
    with pytest.raises(PipelineError, match="one attribution score per source layer"):
        pair_layers("attributed", 40, 32, [1.0] * 39)
    with pytest.raises(PipelineError, match="entries for 3 target layers"):
        validate_pairing({"pairs": [1, 2], "n_source": 4, "n_target": 3})
    with pytest.raises(PipelineError, match="outside"):
        validate_pairing({"pairs": [1, 2, 9], "n_source": 4, "n_target": 3})
    with pytest.raises(PipelineError, match="order-preserving"):
        validate_pairing({"pairs": [1, 3, 2], "n_source": 4, "n_target": 3})


def test_reported_critical_layers_are_the_ones_the_critical_map_moves():
    """The attribute stage reports ``critical_layers`` and the ``critical`` strategy moves layers:
    both must rank alike, by the signed score ("highest-scoring", as the attributed windows).
    Rejects one of them ranking by |score| (the old ``critical_layers``), which here reports
    layer 2 (score -9) while the map moves layer 5 (score 1), and both ranking by |score|."""
    import random

    from pipeline.method.pairing import critical_layers

    scores = [0.1, -9.0, 0.2, 0.3, 1.0, 0.4]  # 6 -> 4: base map [1, 3, 4, 6] leaves 2 and 5 unpaired
    assert critical_layers(scores, 1) == [5]
    assert pair_layers("critical", 6, 4, scores)["pairs"] == [1, 3, 4, 5]
    rng = random.Random(0)
    for trial in range(200):
        n_s, n_t = rng.choice([(6, 4), (40, 32), (28, 24), (5, 2)])
        n = rng.randint(1, 3)
        scores = [rng.uniform(-1, 1) for _ in range(n_s)]
        pairs = pair_layers("critical", n_s, n_t, scores, n_critical=n)["pairs"]
        moved = set(pairs) - set(base_map(n_s, n_t))
        unpaired_critical = set(critical_layers(scores, n)) - set(base_map(n_s, n_t))
        assert moved <= unpaired_critical, (trial, scores, n)
        if n == 1:  # with several, a later one can take the same target block
            assert critical_layers(scores, 1)[0] in pairs, (trial, scores)
