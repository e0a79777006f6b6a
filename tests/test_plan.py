"""The plan command: its estimates against what the tiny pipeline really wrote, its stage count
against DVC's own, and the paper preset planned offline from the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dvc_project import ROOT, sh

from pipeline.core.errors import PipelineError
from pipeline.core.params import load_params
from pipeline.compute.plan import main, plan, with_preset

TOLERANCE = 0.10


def tree_bytes(*paths: Path) -> int:
    return sum(f.stat().st_size for p in paths for f in Path(p).rglob("*") if f.is_file())


def test_disk_estimates_match_the_tiny_pipeline_within_10_percent(reproduced_project):
    root, _, _ = reproduced_project
    rows, x = plan(load_params(root / "params.yaml"), root)
    assert all(s.exact for s in x.splits.values())  # the data stage ran: positions are counted, not assumed
    art = root / "artifacts" / "toy"
    actual = {"models": tree_bytes(root / "models"), "extract": tree_bytes(art / "source"),
              "fisher": tree_bytes(art / "fisher"), "embed": tree_bytes(art / "frontier" / "toy-L00"),
              "frontier": tree_bytes(art / "frontier" / "s0"), "export": tree_bytes(art / "model-s0")}
    estimated = {r.kind: r.disk_bytes for r in rows if r.kind in actual}
    assert set(estimated) == set(actual)
    off = {k: estimated[k] / actual[k] - 1 for k in actual}
    assert all(abs(v) <= TOLERANCE for v in off.values()), off


def test_stage_count_is_dvcs_own(reproduced_project):
    root, env, _ = reproduced_project
    rows, _ = plan(load_params(root / "params.yaml"), root)
    listed = [line for line in sh(root, env, "dvc", "stage", "list").splitlines() if line.strip()]
    assert sum(r.stages for r in rows) == len(listed)
    assert {r.kind: r.stages for r in rows}["frontier"] == len([s for s in listed if s.startswith("frontier@")])


def test_paper_preset_plans_offline_from_the_shipped_configs(tmp_path, capsys):
    params = with_preset(load_params(ROOT / "params.yaml"), ROOT / "presets" / "paper-llama2.yaml")
    for name in ("dvc.yaml", "chain.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    rows, x = plan(params, tmp_path)  # no models/ and no data/ here: configs and typical lengths
    assert x.source.parameters == 13_015_864_320 and x.target.parameters == 6_738_415_616  # Llama-2 13B / 7B
    by = {r.kind: r for r in rows}
    assert by["frontier"].stages == len(params["tasks"]) * len(params["seeds"]) * 32
    assert by["extract"].disk_bytes > 10e9 and by["frontier"].disk_bytes > by["extract"].disk_bytes
    assert by["extract"].device_bytes > 13e9 * 2  # the 13B source's bf16 weights and more
    assert not [r.kind for r in rows if r.kind.startswith(("heldout-", "evaluate-"))]  # one row per kind
    assert by["heldout"].device_bytes > x.target.parameters * 2  # a whole target in bf16
    # Fisher statistics only for the blocks with a layer objective (frontier.layer_from: -4 of 32 blocks).
    assert "blocks 29..31" in by["fisher"].note
    # Eight processes (a machine with eight GPUs): a frontier process holds 8 of the 64 examples.
    eight = {r.kind: r for r in plan(params, tmp_path, processes=8)[0]}
    assert eight["frontier"].device_bytes < by["frontier"].device_bytes / 2
    assert eight["extract"].device_bytes == by["extract"].device_bytes  # whole batches per process
    every = with_preset(params, ROOT / "presets" / "paper-llama2.yaml")
    every["frontier"]["layer_from"] = 1
    assert {r.kind: r for r in plan(every, tmp_path)[0]}["fisher"].disk_bytes > 5 * by["fisher"].disk_bytes
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(load_params(ROOT / "params.yaml")))
    assert main([str(ROOT / "presets" / "paper-llama2.yaml"), "--params", str(tmp_path / "params.yaml")]) == 0
    out = capsys.readouterr().out
    assert "typical answer lengths" in out and "frontier" in out and "GB" in out


def test_a_model_without_a_config_fails_with_a_fix(tmp_path):
    params = load_params(ROOT / "params.yaml")
    params["models"]["source"] = "someone/unknown-model"
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    with pytest.raises(PipelineError, match="no config.json for models.source") as err:
        plan(params, tmp_path)
    assert "models@source" in err.value.fix
