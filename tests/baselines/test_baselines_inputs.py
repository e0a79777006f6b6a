"""Bad input fails early with a PipelineError that names the fix; shared pieces behave."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.baselines import runner
from pipeline.core.cost import measure
from pipeline.core.errors import PipelineError
from pipeline.baselines.training import TrainSettings, n_steps, plan

REPO = Path(__file__).resolve().parents[2]


def stage(project: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m stages.baseline ...`` run in ``project``, with this checkout's code."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "stages.baseline", *args], cwd=project, env=env,
                          capture_output=True, text=True)


def test_unknown_method_names_the_known_ones(params, project):
    with pytest.raises(PipelineError) as err:
        runner.make_context(params, "distill", "toy", 0, project)
    assert "unknown baseline method 'distill'" in err.value.problem
    assert "sft" in err.value.fix and "laten" in err.value.fix


def test_switched_off_method_says_how_to_switch_it_on(params, project):
    params["baselines"]["enabled"]["kd"] = []
    with pytest.raises(PipelineError) as err:
        runner.make_context(params, "kd", "toy", 0, project)
    assert "switched off" in err.value.problem
    assert "baselines.enabled.kd" in err.value.fix
    # the other methods are unaffected
    runner.make_context(params, "sft", "toy", 0, project)


def test_unlisted_seed_and_unknown_keys_are_refused(params, project):
    with pytest.raises(PipelineError, match="seed 7"):
        runner.make_context(params, "sft", "toy", 7, project)
    with pytest.raises(PipelineError, match="not in params.yaml's baselines.seeds"):  # SemAlign's seeds do not count
        runner.make_context({**params, "seeds": [0, 7]}, "sft", "toy", 7, project)
    params["baselines"]["kd"]["temprature"] = 2.0
    ctx = runner.make_context(params, "kd", "toy", 0, project)
    with pytest.raises(PipelineError, match="temprature"):
        runner.run(ctx, project / "out")
    assert not (project / "out").exists()


def test_seeking_rank_is_the_lora_rank_and_the_old_knob_is_refused_before_loading_models(params, project,
                                                                                        monkeypatch):
    """SEEKING's SVD rank initialises the LoRA adapters, so it is baselines.lora.r; the old
    baselines.seeking.rank (which had to equal it by hand) fails naming baselines.lora.r
    before any model is loaded."""
    from pipeline.baselines import seeking

    monkeypatch.setattr("pipeline.baselines.context.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    params["baselines"]["lora"]["r"] = 8
    assert seeking.prepare(runner.make_context(params, "seeking", "toy", 0, project)).rank == 8
    params["baselines"]["seeking"]["rank"] = 8
    ctx = runner.make_context(params, "seeking", "toy", 0, project)
    with pytest.raises(PipelineError, match=r"(?s)baselines\.seeking\.rank.*fix: delete baselines\.seeking\.rank; "
                                            r"set baselines\.lora\.r \(now 8\)"):
        runner.run(ctx, project / "out")
    assert not (project / "out").exists()


@pytest.mark.parametrize("method", ["kd", "hidden_kd"])
def test_missing_cached_source_outputs_fail_before_loading_models(params, project, method, monkeypatch):
    shutil.rmtree(project / "artifacts" / "toy" / "source" / "transfer")
    monkeypatch.setattr("pipeline.baselines.context.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    ctx = runner.make_context(params, method, "toy", 0, project)
    out = runner.output_dir(project, "toy", method, 0)
    with pytest.raises(PipelineError) as err:
        runner.run(ctx, out)
    assert "cached source outputs are missing" in err.value.problem
    assert "extract stage" in err.value.fix
    assert not out.exists()


def test_missing_paired_layer_is_named(params, project):
    (project / "artifacts" / "toy" / "source" / "transfer" / "layer_03.safetensors").unlink()
    ctx = runner.make_context(params, "hidden_kd", "toy", 0, project)
    with pytest.raises(PipelineError, match="layer_03.safetensors"):
        runner.run(ctx, project / "out")


@pytest.mark.parametrize("method", ["seeking", "laten"])
def test_source_model_methods_need_models_source(params, project, method):
    shutil.rmtree(project / "models" / "source")
    ctx = runner.make_context(params, method, "toy", 0, project)
    with pytest.raises(PipelineError) as err:
        runner.run(ctx, project / "out")
    assert "models/source/config.json" in err.value.problem and "models stage" in err.value.fix


def test_laten_needs_the_validation_split(params, project):
    (project / "data" / "tasks" / "toy" / "validation.jsonl").unlink()
    ctx = runner.make_context(params, "laten", "toy", 0, project)
    with pytest.raises(PipelineError, match="validation.jsonl"):
        runner.run(ctx, project / "out")


def test_stale_cache_is_detected(params, project):
    params["data"]["max_length"] = 16  # the cache was written with 64: encodings differ
    ctx = runner.make_context(params, "kd", "toy", 0, project)
    with pytest.raises(PipelineError) as err:
        runner.run(ctx, project / "out")
    assert "do not match" in err.value.problem and "data.max_length" in err.value.fix


def test_stage_script_reports_errors_without_traceback(params, project):
    import yaml

    (project / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage(project, "nope", "toy")
    assert proc.returncode == 2
    assert "unknown baseline method 'nope'" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plan_is_seeded_and_capped():
    s = TrainSettings(epochs=3, batch_size=4, max_steps=5)
    a, b, c = plan(10, s, 0), plan(10, s, 0), plan(10, s, 1)
    assert len(a) == 5 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert sorted(torch.cat(plan(10, TrainSettings(batch_size=4), 0)).tolist()) == list(range(10))


def test_max_steps_overrides_epochs_and_runs_further_epochs():
    """params.yaml's "max_steps: 4" with one epoch over 6 examples at batch 4 must give 4 steps
    (two epochs, each a fresh shuffle of all 6), not the 2 of the epoch. Rejects the old plan
    that only cut the epochs short (2 steps here), and one that repeats an epoch's order."""
    steps = plan(6, TrainSettings(epochs=1, batch_size=4, max_steps=4), 0)
    assert [len(s) for s in steps] == [4, 2, 4, 2]
    first, second = torch.cat(steps[:2]).tolist(), torch.cat(steps[2:]).tolist()
    assert sorted(first) == sorted(second) == list(range(6)) and first != second
    assert len(plan(6, TrainSettings(epochs=3, batch_size=4), 0)) == 6  # max_steps 0: epochs x ceil(6 / 4)
    assert n_steps(6, TrainSettings(epochs=3, batch_size=4, max_steps=4)) == 4


def test_cost_measures_time_and_its_own_peak():
    with measure() as big:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del block
    with measure() as small:
        pass
    assert big.wall_s > 0 and big.peak_rss_bytes > 0
    if big.peak_rss_scope == "measurement":
        assert big.peak_rss_bytes - small.peak_rss_bytes > 32 * 2**20


@pytest.mark.parametrize("method", ["seeking", "laten"])
def test_shallower_source_is_refused_before_loading(params, project, method, monkeypatch):
    models = project / "models"
    (models / "source").rename(models / "tmp")
    (models / "target").rename(models / "source")
    (models / "tmp").rename(models / "target")
    monkeypatch.setattr("pipeline.baselines.context.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    ctx = runner.make_context(params, method, "toy", 0, project)
    with pytest.raises(PipelineError, match="the source has only 4"):
        runner.run(ctx, project / "out")


def test_stage_script_writes_a_loadable_model_dir(params, project):
    import json

    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    params["baselines"]["sft"]["train"]["max_steps"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage(project, "sft", "toy", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    out = project / "artifacts" / "toy" / "baselines" / "sft-s1"
    cost = json.loads((out / "cost.json").read_text())
    assert cost["seed"] == 1 and cost["wall_s"] > 0 and cost["peak_rss_bytes"] > 0
    assert len(json.loads((out / "log.json").read_text())["train"]) == 2
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
