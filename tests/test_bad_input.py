"""Bad input stops early with a message naming the problem and the fix, leaving nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.core.adapter import ModelAdapter
from pipeline.core.artifacts import atomic_path, load_tensors, read_json, save_tensors
from pipeline.core.chain import build_chain, check_chain, load_chain, parse_key, target_depth
from pipeline.core.params import seeds
from pipeline.core.errors import PipelineError
from pipeline.method.frontier import FrontierConfig, OutputTargets, States, train_block
from pipeline.core.loading import check_same_vocab, load_model, load_tokenizer
from pipeline.core.tiny import build_tokenizer, swap_tokens

ROOT = Path(__file__).resolve().parents[1]


def test_vocabulary_mismatch_names_the_first_differing_ids(tiny_pair):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = build_tokenizer()
    vocab = tok.get_vocab()
    swapped = dict(vocab)
    a, b = sorted(vocab, key=vocab.get)[100:102]
    swapped[a], swapped[b] = vocab[b], vocab[a]
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(swapped, unk_token=None)))
    other.pre_tokenizer = pre_tokenizers.ByteLevel()
    with pytest.raises(PipelineError, match=r"(?s)id 100: .* vs .*same family and tokenizer"):
        check_same_vocab(tok, other)
    check_same_vocab(tok, load_tokenizer(str(tiny_pair[1])))  # the real pair shares its vocabulary


def test_layer_outside_the_model(tiny_pair):
    adapter = ModelAdapter(load_model(str(tiny_pair[1]), "float32"))
    with pytest.raises(PipelineError, match=r"(?s)layer 5 is outside the model .*blocks 1\.\.4"):
        adapter.block(5)
    with pytest.raises(PipelineError, match="outside"):
        adapter.check_layer(0)


def test_unknown_objective_and_trainable():
    with pytest.raises(PipelineError, match="(?s)unknown frontier objective 'mse'.*fisher"):
        FrontierConfig(objective="mse").validate()
    with pytest.raises(PipelineError, match="unknown frontier.trainable"):
        FrontierConfig(trainable="half").validate()


def test_missing_and_corrupt_artifacts(tmp_path):
    with pytest.raises(PipelineError, match="(?s)is missing.*fix: run the extract stage"):
        load_tensors(tmp_path / "nope.safetensors", "the extract stage")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(PipelineError, match="(?s)corrupt.*dvc repro --force"):
        load_tensors(bad)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PipelineError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_nan_loss_stops_training(tiny_pair):
    target = ModelAdapter(load_model(str(tiny_pair[1]), "float32"))
    hidden = torch.randn(2, 5, target.width)
    hidden[0, 0, 0] = float("nan")
    mask = torch.ones(2, 5, dtype=torch.long)
    sup = torch.zeros(2, 5, dtype=torch.bool)
    sup[:, 1:3] = True
    out = OutputTargets(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3))
    with pytest.raises(PipelineError, match="(?s)NaN or Inf.*lower the learning rate"):
        train_block(target, target.n_layers, States(hidden, mask, sup), None, out, FrontierConfig(steps=1), False)


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out", is_dir=True) as tmp:
            save_tensors(tmp / "a.safetensors", {"x": torch.zeros(2)})
            raise RuntimeError("crash halfway")
    assert list(tmp_path.iterdir()) == []
    save_tensors(tmp_path / "ok.safetensors", {"x": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["ok.safetensors"]


def run_stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=root, capture_output=True, text=True)


def test_stage_with_corrupt_input_exits_cleanly_and_writes_nothing(tmp_path):
    import shutil

    for item in ("pipeline", "stages", "params.yaml", "chain.yaml"):
        src = ROOT / item
        shutil.copytree(src, tmp_path / item) if src.is_dir() else shutil.copy(src, tmp_path / item)
    (tmp_path / "artifacts/gsm8k").mkdir(parents=True)
    (tmp_path / "artifacts/gsm8k/attribution.json").write_text("{truncated")
    res = run_stage(tmp_path, "stages.pair", "gsm8k")
    assert res.returncode == 2
    assert "not valid JSON" in res.stderr and "fix:" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "artifacts/gsm8k/pairing.json").exists()
    res = run_stage(tmp_path, "stages.data", "klingon")
    assert res.returncode == 2 and "tasks_config.klingon" in res.stderr
    assert not (tmp_path / "data/tasks/klingon").exists()


def test_committed_chain_is_consistent_with_params_and_target_depth():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    from pipeline.core.materialize import known_depth

    check_chain(load_chain(ROOT / "chain.yaml"), params["tasks"], params["seeds"],
                target_depth(str(params["models"]["target"]), known=known_depth))


def test_chain_checker_catches_broken_chains():
    chain = build_chain(["a", "b"], 3, [0, 2])
    assert chain["a-s2-L01"]["prev"] == "a-L00" and chain["a-s2-L02"]["prev"] == "a-s2-L01"
    check_chain(chain, ["a", "b"], [0, 2], 3)
    with pytest.raises(PipelineError, match="layers .*1..4"):
        check_chain(chain, ["a", "b"], [0, 2], 4)
    broken = dict(chain)
    broken["a-s0-L03"] = {"task": "a", "seed": 0, "layer": 3, "prev": "a-s0-L01", "dir": "s0/a-s0-L03",
                          "prev_dir": "s0/a-s0-L01"}
    with pytest.raises(PipelineError, match="a-s0-L03 follows 'a-s0-L01'"):
        check_chain(broken, ["a", "b"], [0, 2], 3)
    crossed = dict(chain)
    crossed["a-s0-L03"] = {"task": "a", "seed": 0, "layer": 3, "prev": "a-s2-L02",  # another seed's chain
                           "dir": "s0/a-s0-L03", "prev_dir": "s2/a-s2-L02"}
    with pytest.raises(PipelineError, match="follows 'a-s2-L02'"):
        check_chain(crossed, ["a", "b"], [0, 2], 3)
    misplaced = dict(chain)
    misplaced["a-s0-L03"] = dict(chain["a-s0-L03"], dir="a-s0-L03")  # outside its seed's directory
    with pytest.raises(PipelineError, match="names directories"):
        check_chain(misplaced, ["a", "b"], [0, 2], 3)
    with pytest.raises(PipelineError, match="covers tasks"):
        check_chain(chain, ["a", "b", "c"], [0, 2], 3)
    with pytest.raises(PipelineError, match="covers seeds"):
        check_chain(chain, ["a", "b"], [0, 1, 2], 3)
    with pytest.raises(PipelineError, match="not a chain key"):
        parse_key("a-L03")  # blocks >= 1 belong to a seed's chain
    with pytest.raises(PipelineError, match="seeds must be"):
        seeds({"seeds": [0, 0]})


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os

    save_tensors(tmp_path / "f.safetensors", {"x": torch.zeros(1)})
    with atomic_path(tmp_path / "d", is_dir=True) as tmp:
        (tmp / "a").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize("preset", sorted((ROOT / "presets").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_apply_to_the_committed_params_and_keep_them_valid(tmp_path, preset):
    """A preset rewrites params.yaml in place, comments kept; the result must parse and carry
    the preset's values with everything else unchanged (a list with inline comments once
    made ruamel fuse two keys onto one line)."""
    from pipeline.core.preset import apply

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = yaml.safe_load((ROOT / "params.yaml").read_text())
    apply(preset, tmp_path / "params.yaml", n_layers=4)
    after = yaml.safe_load((tmp_path / "params.yaml").read_text())
    wanted = yaml.safe_load(preset.read_text())

    def check(sub_after, sub_wanted, sub_before, path=""):
        for key, value in sub_wanted.items():
            if isinstance(value, dict) and isinstance(sub_before.get(key), dict):
                check(sub_after[key], value, sub_before[key], f"{path}{key}.")
            else:
                assert sub_after[key] == value, f"{path}{key}"
        for key in set(sub_before) - set(sub_wanted):
            assert sub_after[key] == sub_before[key], f"{path}{key}"

    check(after, wanted, before)
    chain = load_chain(tmp_path / "chain.yaml")
    check_chain(chain, after["tasks"], after["seeds"], 4)


def test_old_params_with_frontier_tau_are_refused_naming_the_move():
    """frontier.tau moved to fisher.tau (one temperature for p~ and for d). An old params file
    that still sets it must fail with the move named, not train at a temperature the fisher
    stage never used; the committed params give the frontier fisher.tau. Rejects a
    frontier_config that accepts (or silently drops) the old key."""
    from pipeline.method.frontier import frontier_config

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "tau" not in params["frontier"]
    params["fisher"]["tau"] = 0.5
    assert frontier_config(params, seed=0).tau == 0.5
    params["frontier"]["tau"] = 2.0
    moved = r"(?s)frontier\.tau \(2\.0\).*moved to fisher\.tau.*fix: delete frontier\.tau"
    with pytest.raises(PipelineError, match=moved):
        frontier_config(params, seed=0)
    params["frontier"].pop("tau")
    params["fisher"]["tau"] = 0
    with pytest.raises(PipelineError, match="fisher.tau must be a number > 0"):
        frontier_config(params, seed=0)


def test_lora_targets_are_roles_everywhere_and_old_module_names_are_refused_naming_them():
    """frontier.lora.targets once named modules (v_proj, o_proj, ...) where baselines.lora.targets
    names roles (q, k, v, ...); both are roles now, mapped to each family's modules by the
    adapter. An old params file fails naming the roles to write, before any model loads; an
    unknown role fails listing the known ones. Rejects a frontier that passes module names
    through to PEFT."""
    from pipeline.method.frontier import frontier_config

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["frontier"]["lora"]["targets"] == ["v", "o", "up", "down"]
    assert frontier_config(params, seed=0).lora.targets == ("v", "o", "up", "down")
    params["frontier"]["lora"]["targets"] = ["v_proj", "o_proj", "up_proj", "down_proj"]
    old_spelling = r"(?s)frontier\.lora\.targets names modules.*fix: write targets: \[v, o, up, down\]"
    with pytest.raises(PipelineError, match=old_spelling):
        frontier_config(params, seed=0)
    params["frontier"]["lora"]["targets"] = ["v", "attn"]
    with pytest.raises(PipelineError, match=r"frontier\.lora\.targets has unknown module roles \['attn'\]"):
        frontier_config(params, seed=0)


def test_frontier_refuses_fisher_statistics_built_at_another_temperature(tmp_path, monkeypatch):
    """A fisher artifact records the tau it was built with; the frontier reads it only at the
    same tau (a stale artifact from a run by hand would otherwise pair p~ at one tau with d at
    another). Rejects a reader that ignores the recorded tau."""
    from pipeline.core import layout
    from stages.frontier import layer_targets

    monkeypatch.chdir(tmp_path)
    stats = {name: torch.zeros(3, 2) for name in ("topk_logits", "topk_probs", "aligned")}
    save_tensors(layout.layer_file(layout.fisher_dir("toy"), 1), {**stats, "topk_ids": torch.zeros(3, 2).long()},
                 {"layer": 1, "tau": 1.0})
    assert layer_targets("toy", 1, 1.0).topk_ids.shape == (3, 2)
    stale = r"(?s)built with tau 1\.0, params\.yaml's fisher\.tau is 2\.0.*dvc repro fisher@toy"
    with pytest.raises(PipelineError, match=stale):
        layer_targets("toy", 1, 2.0)


def test_vocab_stage_refuses_a_mismatched_pair_from_tokenizer_files_alone(tiny_pair, tmp_path, monkeypatch):
    """The vocab stage, which extract and attribute wait for, names the first differing ids
    of a pair whose tokenizers swap two tokens, and writes no record; it reads no weights
    (the copies have none). Rejects a check that compares only vocabulary sizes, and one
    that loads the models (checked by patching)."""
    from pipeline.core import layout
    from pipeline.core.loading import vocab_record
    from stages import vocab

    source, target = tiny_pair
    models = tmp_path / "models"
    shutil.copytree(source, models / "source", ignore=shutil.ignore_patterns("*.safetensors"))
    swap_tokens(target, models / "target")
    for weights in (models / "target").glob("*.safetensors"):
        weights.unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"(?s)tokenizers differ: id 100: .* vs .*same family and tokenizer"):
        vocab.main()
    assert not layout.vocab_file().exists()

    shutil.rmtree(models / "target")
    shutil.copytree(target, models / "target", ignore=shutil.ignore_patterns("*.safetensors"))
    vocab.main()
    assert read_json(layout.vocab_file()) == vocab_record(load_tokenizer(str(target)), 320)
    config = json.loads((models / "target/config.json").read_text())
    (models / "target/config.json").write_text(json.dumps({**config, "vocab_size": 384}))
    with pytest.raises(PipelineError, match="LM heads have 320 .source. vs 384 .target. rows"):
        vocab.main()


def test_frontier_reads_numbers_that_yaml_left_as_strings():
    """`dvc exp run -S frontier.lr=2e-5` writes `lr: 2e-05`, which YAML 1.1 reads as a string; the
    frontier must train with 2e-5, not crash in validate (as a queued lr sweep once did), and a
    word where a number belongs must fail naming the key."""
    from pipeline.method.frontier import frontier_config

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["frontier"].update(lr="2e-05", steps="16", layer_weight="1e-2")
    cfg = frontier_config(params, seed=0)
    assert (cfg.lr, cfg.steps, cfg.layer_weight) == (2e-5, 16, 0.01) and isinstance(cfg.steps, int)
    params["frontier"]["lr"] = "fast"
    with pytest.raises(PipelineError, match="frontier.lr must be a number"):
        frontier_config(params, seed=0)
    params["frontier"].update(lr=1e-4, steps=2.5)
    with pytest.raises(PipelineError, match="frontier.steps must be a whole number"):
        frontier_config(params, seed=0)


@pytest.mark.parametrize("listed, problem", [("gsm8k", "must be a list"), ([1], "must be a list"),
                                             (["mmlu"], "which tasks: does not")])
def test_diagnostics_must_list_tasks_the_run_transfers(listed, problem):
    from pipeline.core.params import check_diagnostics_task, diagnostic_tasks

    params = {"tasks": ["gsm8k"], "diagnostics": listed}
    with pytest.raises(PipelineError) as err:
        diagnostic_tasks(params)
    assert problem in str(err.value)
    assert diagnostic_tasks({"tasks": ["gsm8k"], "diagnostics": ["gsm8k"]}) == ["gsm8k"]
    assert diagnostic_tasks({"tasks": ["gsm8k"]}) == []
    with pytest.raises(PipelineError, match="switched off"):
        check_diagnostics_task({"tasks": ["gsm8k"], "diagnostics": []}, "gsm8k")


def test_data_stage_refuses_a_bad_diagnostics_list_before_writing(tmp_path):
    """The first stage checks the list, so a typo fails before any model runs."""
    from stages.data import run

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(tasks=["toy"], diagnostics=["tyo"], tasks_config={"toy": {"attribution": 1, "transfer": 2,
                                                                            "validation": 1, "evaluation": 1}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(PipelineError, match="diagnostics lists"):
        run("toy", tmp_path / "params.yaml", tmp_path / "tasks")
    assert not (tmp_path / "tasks").exists()


def test_diagnostic_stages_loop_over_diagnostics_and_the_headline_over_tasks():
    """quality, curve and analysis are the optional diagnostics; SemAlign's held-out records
    (the headline) and every method stage run for every task."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    per_task = {n: st["matrix"]["task"] for n, st in stages.items() if "task" in (st.get("matrix") or {})}
    assert {n for n, v in per_task.items() if v == "${diagnostics}"} == {"quality", "curve", "analysis"}
    assert per_task["heldout-semalign"] == per_task["export"] == "${tasks}"
    assert "diagnostics" in stages["data"]["do"]["params"]
