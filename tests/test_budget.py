"""Fair budgets: what each method trains on, and that no preset starves a baseline."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.evaluation import budget
from pipeline.core.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


def preset_params(tmp_path: Path, preset: Path | None) -> dict:
    """params.yaml, with ``preset`` merged in the way `python -m pipeline.core.preset` does it."""
    from pipeline.core.preset import apply

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    if preset is not None:
        apply(preset, tmp_path / "params.yaml", n_layers=4)
    return yaml.safe_load((tmp_path / "params.yaml").read_text())


@pytest.mark.parametrize("preset", [None, *PRESETS], ids=lambda p: "params.yaml" if p is None else p.name)
def test_no_preset_gives_a_method_fewer_passes_than_semalign(tmp_path, preset):
    """Every method on every task of the preset (switched on or not: the default's settings are
    what compare inherits) sees the transfer split at least as often as each SemAlign block.
    Fails on the committed params before this check existed (epochs 1, max_steps 4: 2 steps of
    4 over 6 examples = 1.33 passes against SemAlign's 2.67)."""
    params = preset_params(tmp_path, preset)
    runs = [b for task in params["tasks"] for b in budget.task_budgets(params, task, n_layers=4)]
    assert budget.shortfalls(runs) == []
    assert {b.method for b in runs} == {"semalign", *budget.BASELINES}
    assert set(budget.method_seeds(params)) == {"semalign", *budget.BASELINES}  # both seed lists valid


def small_params() -> dict:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(base)
    params["tasks"] = ["toy"]
    params["tasks_config"] = {"toy": {"attribution": 3, "transfer": 6, "validation": 4, "evaluation": 4}}
    params["frontier"].update(steps=3, batch_size=4, layer_from=2, layer_weight=1.0, kl_from=0)
    b = params["baselines"]
    b["sft"]["train"].update(epochs=3, max_steps=0, batch_size=4)
    b["kd"]["train"].update(epochs=1, max_steps=4, batch_size=4)
    b["seeking"]["seed_examples"] = 32
    b["laten"]["train"].update(max_steps=5, batch_size=16)
    b["laten"].update(extract_examples=20, align_examples=80)
    return params


def test_budget_numbers_match_a_hand_count():
    """N = 6 transfer examples, 4 target blocks.

    SemAlign: blocks 2..4 train (layer_from 2; block 1 has no objective and trains 0 steps),
    3 steps of 4 each: 9 steps, 36 examples, 12 / 6 = 2 passes per block (counting block 1
    gives 12 steps; counting passes over all blocks gives 6).
    SFT, 3 epochs of ceil(6 / 4) = 2 steps (4 + 2 examples): 6 steps, 18 seen, 3 passes
    (assuming full batches gives 24 and 4).
    KD, max_steps 4 over one epoch: 4 steps (the old cap gave 2), 12 seen, 2 passes.
    SEEKING: seeds capped by the transfer split (6 of 32). LaTen: align capped to 6, extract to
    the attribution split's 3; 5 steps of all 6 = 30 seen, 5 passes. With 3 transfer examples
    a SemAlign step sees 3, not the batch's 4 (frontier.train_block takes what one shuffle has)."""
    params = small_params()
    got = {b.method: b for b in budget.task_budgets(params, "toy", n_layers=4)}
    s = got["semalign"]
    assert (s.optimizer_steps, s.examples_seen, s.passes, s.extra["trained_blocks"]) == (9, 36, 2.0, 3)
    assert (got["sft"].optimizer_steps, got["sft"].examples_seen, got["sft"].passes) == (6, 18, 3.0)
    assert (got["kd"].optimizer_steps, got["kd"].examples_seen, got["kd"].passes) == (4, 12, 2.0)
    assert got["seeking"].extra == {"seed_examples": 6} and got["seeking"].capped
    params["tasks_config"]["toy"]["transfer"] = 3  # fewer than a batch: SemAlign's steps take all 3
    assert budget.semalign(params, "toy", 4).examples_seen == 3 * 3 * 3
    lat = got["laten"]
    assert (lat.examples_used, lat.optimizer_steps, lat.examples_seen, lat.passes) == (6, 5, 30, 5.0)
    assert lat.extra == {"extract_examples": 3} and len(lat.capped) == 2


def test_shortfall_names_the_method_and_task():
    """One method one step short of SemAlign's passes is reported; a strict > check (or none)
    would let it through."""
    params = small_params()
    params["baselines"]["kd"]["train"].update(max_steps=3)  # 3 steps: 4 + 2 + 4 = 10 seen, 1.67 passes
    runs = budget.task_budgets(params, "toy", n_layers=4)
    problems = budget.shortfalls(runs)
    assert len(problems) == 1 and problems[0].startswith("kd on toy: 1.67 passes")


def test_enabled_runs_only():
    params = small_params()
    params["baselines"]["enabled"] = {"sft": ["toy"], "kd": [], "hidden_kd": [], "seeking": [], "laten": []}
    runs = budget.run_budgets(params, {"toy": 4})
    assert [(b.method, b.task) for b in runs] == [("semalign", "toy"), ("sft", "toy")]


def test_bad_split_sizes_fail_with_a_fix():
    params = small_params()
    params["tasks_config"]["toy"]["transfer"] = 0
    with pytest.raises(PipelineError, match="anything to train on"):
        budget.semalign(params, "toy", 4)
    del params["tasks_config"]["toy"]["transfer"]
    with pytest.raises(PipelineError, match="integer sizes"):
        budget.baseline(params, "sft", "toy")


def test_semalign_and_the_baselines_have_their_own_seeds():
    """SemAlign at seeds [0, 1], the baselines at [3]: each budget row names its own; one list
    used for both (the old single `seeds`) would give the baselines [0, 1]."""
    params = small_params()
    params["seeds"], params["baselines"]["seeds"] = [0, 1], [3]
    params["baselines"]["enabled"] = {"sft": ["toy"], "kd": ["toy"], "hidden_kd": [], "seeking": [], "laten": []}
    runs = {b.method: b.seeds for b in budget.run_budgets(params, {"toy": 4})}
    assert runs == {"semalign": (0, 1), "sft": (3,), "kd": (3,)}


@pytest.mark.parametrize("bad", [None, [], [0, 0], [-1], ["0"]])
def test_bad_baseline_seeds_fail_with_a_fix(bad):
    params = small_params()
    params["baselines"]["seeds"] = bad
    with pytest.raises(PipelineError, match="baselines.seeds must be") as err:
        budget.run_budgets(params, {"toy": 4})
    assert "under baselines" in err.value.fix


def test_dvc_runs_the_baselines_at_their_seeds_and_semalign_at_its_own():
    """Every stage of a baseline (training, held-out, evaluation) loops over baselines.seeds;
    SemAlign's per-seed stages over seeds. A baseline stage left on `seeds` would run (and the
    report would expect) runs the budget does not count."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    per_seed = {name: st["matrix"]["seed"] for name, st in stages.items() if "seed" in (st.get("matrix") or {})}
    baseline = {n for n in per_seed if n.split("-", 1)[-1] in budget.BASELINES}
    assert len(baseline) == 3 * len(budget.BASELINES)
    assert {per_seed[n] for n in baseline} == {"${baselines.seeds}"}
    assert {per_seed[n] for n in set(per_seed) - baseline} == {"${seeds}"}


@pytest.mark.parametrize("preset", [None, *PRESETS], ids=lambda p: "params.yaml" if p is None else p.name)
def test_every_preset_scores_the_untouched_target(tmp_path, preset):
    """The paired tests compare every model with the untouched target: each preset evaluates it,
    and the references are the pair's two models only (dvc.yaml's evaluate-reference loops over
    them, reading models/NAME)."""
    refs = preset_params(tmp_path, preset)["evaluation"]["references"]
    assert "target" in refs and set(refs) <= {"source", "target"} and len(set(refs)) == len(refs)
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate-reference"]
    assert stage["matrix"]["model"] == "${evaluation.references}"
