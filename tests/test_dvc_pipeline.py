"""The real `dvc` CLI on the tiny project: caching and incremental re-runs."""

from __future__ import annotations

import json

import yaml
from dvc_project import repro, sh, write_params


def set_param(root, dotted: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    node = params
    *path, last = dotted.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_pipeline_runs_then_caches_and_reruns_only_what_changed(reproduced_copy):
    root, env, first = reproduced_copy
    assert {"align", "extract@toy", "attribute@toy", "pair@toy", "fisher@toy", "embed@toy",
            "frontier@toy-L01", "frontier@toy-L02", "export@toy", "quality@toy",
            "evaluate-reference@source-toy", "evaluate-reference@target-toy", "evaluate-semalign@toy",
            "report"} <= first
    results = (root / "metrics/results.md").read_text()
    assert "semalign" in results and "source" in results
    quality = json.loads((root / "metrics/quality/toy.json").read_text())
    assert {"target_kl", "semalign_kl", "target_top1", "semalign_top1"} <= set(quality)

    assert repro(root, env) == set()
    assert json.loads(sh(root, env, "dvc", "status", "--json")) == {}

    set_param(root, "frontier.steps", 2)
    ran = repro(root, env)
    chain_and_after = {"frontier@toy-L01", "frontier@toy-L02", "export@toy", "quality@toy", "analysis@toy",
                       "evaluate-semalign@toy"}
    assert chain_and_after <= ran <= chain_and_after | {"report"}  # report only if a score moved

    set_param(root, "quality.batch_size", 2)
    assert repro(root, env) == {"quality@toy"}

    set_param(root, "pairing.strategy", "floor")
    ran = repro(root, env)
    assert "pair@toy" in ran and not {"extract@toy", "attribute@toy", "align", "embed@toy"} & ran

    # adding a task runs that task's stages and nothing of the others
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tasks"].append("toy_copy")
    params["tasks_config"]["toy_copy"] = dict(params["tasks_config"]["toy"])
    write_params(root, params, n_layers=2)
    ran = repro(root, env)
    assert ran and all("toy_copy" in stage for stage in ran), ran
