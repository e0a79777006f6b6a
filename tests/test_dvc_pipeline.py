"""The real `dvc` CLI on the tiny project: caching and incremental re-runs."""

from __future__ import annotations

import json

import yaml
from dvc_project import RUNNING, repro, set_param, sh, write_params


def test_pipeline_runs_then_caches_and_reruns_only_what_changed(reproduced_copy):
    root, env, first = reproduced_copy
    assert {"align", "extract@toy", "attribute@toy", "pair@toy", "fisher@toy", "embed@toy",
            "frontier@toy-s0-L01", "frontier@toy-s0-L02", "export@toy-0", "quality@toy-0",
            "heldout-target@toy", "heldout-semalign@toy-0",
            "evaluate-reference@source-toy", "evaluate-reference@target-toy", "evaluate-semalign@toy-0",
            "report"} <= first
    results = (root / "metrics/results.md").read_text()
    assert "semalign" in results and "source" in results
    assert "### Held-out agreement" in results and "| toy | semalign-s0 |" in results
    assert "each model against the untouched target" in results and "### Budgets" in results
    quality = json.loads((root / "metrics/quality/toy-s0.json").read_text())
    assert {"target_layer_agreement", "semalign_layer_agreement", "positions", "target_kl",
            "semalign_kl"} <= set(quality)
    assert abs(quality["kl_reduction"] - (quality["target_kl"] - quality["semalign_kl"])) < 1e-9
    assert quality["kl_reduction_low"] <= quality["kl_reduction"] <= quality["kl_reduction_high"]
    heldout = json.loads((root / "metrics/heldout/target/toy.json").read_text())
    assert heldout["toy"]["target"]["kl"] >= 0 and heldout["toy"]["target"]["examples"] == 4

    assert repro(root, env) == set()
    assert json.loads(sh(root, env, "dvc", "status", "--json")) == {}

    set_param(root, "frontier.steps", 2)
    ran = repro(root, env)
    chain_and_after = {"frontier@toy-s0-L01", "frontier@toy-s0-L02", "export@toy-0", "quality@toy-0", "analysis@toy-0",
                       "evaluate-semalign@toy-0", "heldout-semalign@toy-0", "curve@toy-0",
                       "report"}  # report: the budget changed
    assert chain_and_after <= ran <= chain_and_after

    set_param(root, "quality.max_positions", 3)
    assert repro(root, env) == {"quality@toy-0"}  # the per-layer budget concerns SemAlign's stage only
    set_param(root, "quality.batch_size", 2)
    held = {"quality@toy-0", "heldout-target@toy", "heldout-semalign@toy-0"}
    assert held <= repro(root, env) <= held | {"report"}  # report only if a value moved

    set_param(root, "pairing.strategy", "floor")
    ran = repro(root, env)
    assert "pair@toy" in ran and not {"extract@toy", "attribute@toy", "align", "embed@toy"} & ran

    # adding a task runs that task's stages and nothing of the others
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tasks"].append("toy_copy")
    params["tasks_config"]["toy_copy"] = dict(params["tasks_config"]["toy"])
    write_params(root, params, n_layers=2)
    ran = repro(root, env)
    # the report re-runs too: the SemAlign cost now sums over both tasks
    assert ran and all("toy_copy" in stage for stage in ran - {"report"}), ran


def test_comparison_runs_every_seed_of_every_method_and_reports_mean_std_and_cost(reproduced_copy):
    """What the README's comparison command does, on the tiny pair: SemAlign and two
    baselines with two seeds each; adding a seed leaves the existing seed's stages cached."""
    import math

    import pandas as pd
    from safetensors.torch import load_file

    root, env, _ = reproduced_copy
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["seeds"] = params["baselines"]["seeds"] = [0, 1]
    params["baselines"]["enabled"].update(sft=["toy"], kd=["toy"])
    for method in ("sft", "kd"):
        params["baselines"][method]["train"].update(max_steps=2, batch_size=3)
    write_params(root, params, n_layers=2)
    ran = repro(root, env)
    assert {"frontier@toy-s1-L01", "frontier@toy-s1-L02", "export@toy-1", "evaluate-semalign@toy-1",
            "baseline-sft@toy-0", "baseline-sft@toy-1", "baseline-kd@toy-0", "baseline-kd@toy-1",
            "evaluate-sft@toy-0", "evaluate-kd@toy-1", "report"} <= ran, ran
    assert not {"frontier@toy-s0-L01", "frontier@toy-s0-L02", "export@toy-0", "evaluate-semalign@toy-0"} & ran

    blocks = [load_file(root / f"artifacts/toy/frontier/s{s}/toy-s{s}-L01/block.safetensors") for s in (0, 1)]
    assert any(not blocks[0][k].equal(blocks[1][k]) for k in blocks[0])  # the seed changes the training

    tab = pd.read_csv(root / "metrics/results.csv").set_index("model")
    for method in ("semalign", "sft", "kd"):
        assert tab.loc[method, "runs"] == 2
        assert math.isfinite(tab.loc[method, "toy_std"])
        assert tab.loc[method, "wall_min"] > 0 and tab.loc[method, "peak_gb"] > 0
        assert math.isfinite(tab.loc[method, "wall_min_std"])
    assert math.isnan(tab.loc["source", "wall_min"]) and tab.loc["source", "runs"] == 1
    md = (root / "metrics/results.md").read_text()
    assert "semalign (2 seeds)" in md and "sft (2 seeds)" in md and "cost: wall (min)" in md
    assert {"heldout-sft@toy-0", "heldout-kd@toy-1"} <= ran and "heldout-target@toy" not in ran  # scored once
    for run in ("semalign-s1", "sft-s0", "kd-s1"):
        assert f"| toy | {run} |" in md  # held-out and paired rows, one per seed's run
    assert tab.loc["sft", "optimizer_steps"] == 2 and tab.loc["sft", "examples_seen"] == 6  # max_steps 2 of 3
    costs = {p.stem for p in (root / "metrics/cost/frontier").glob("*.json")}
    assert costs == {"toy-s0-L01", "toy-s0-L02", "toy-s1-L01", "toy-s1-L02"}


def test_a_mismatched_vocabulary_stops_the_pipeline_before_any_source_pass(reproduced_copy, tmp_path):
    """A source whose tokenizer swaps two ids: `dvc repro` fails at the vocab stage, naming
    them, and the source passes (extract, attribute), whose inputs changed, do not run.
    Rejects source passes that do not wait for the vocabulary check (DVC would run them
    first: checked by removing artifacts/vocab.json from their deps)."""
    import subprocess

    from pipeline.core.tiny import swap_tokens

    root, env, _ = reproduced_copy
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["models"]["source"] = str(swap_tokens(params["models"]["source"], tmp_path / "swapped"))
    write_params(root, params, n_layers=2)
    run = subprocess.run(["dvc", "repro", "extract@toy", "attribute@toy"], cwd=root, env=env, capture_output=True,
                         text=True)
    log = run.stdout + run.stderr
    assert run.returncode != 0 and "tokenizers differ: id 100" in log, log
    ran = set(RUNNING.findall(log))
    assert "vocab" in ran and not {"extract@toy", "attribute@toy"} & ran, ran


def test_results_are_collected_only_up_to_date_or_said_partial(reproduced_copy):
    """scripts/collect_results.sh copies a finished run's report with its params, lock and
    commit; it refuses a run whose stages no longer match params.yaml (nothing written), and
    with --partial collects it while naming the stages that did not run."""
    import subprocess

    root, env, _ = reproduced_copy

    def collect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "scripts/collect_results.sh", *args], cwd=root, env=env,
                              capture_output=True, text=True)

    done = collect("results/full")
    assert done.returncode == 0, done.stderr
    provenance = (root / "results/full/PROVENANCE").read_text()
    assert provenance.startswith("commit: ") and "(not part of the report): none" in provenance
    assert (root / "results/full/results.md").read_text() == (root / "metrics/results.md").read_text()
    set_param(root, "frontier.lr", 0.5)  # changed, not rerun: the chain no longer matches params.yaml
    stale = collect("results/stale")
    assert stale.returncode == 2 and "out of date" in stale.stderr and not (root / "results/stale").exists()
    part = collect("results/part", "--partial")
    assert part.returncode == 0, part.stderr
    assert "frontier@toy-s0-L01" in (root / "results/part/PROVENANCE").read_text()


def test_make_run_ends_with_the_reports_headline(reproduced_copy):
    """The line of the Makefile's `run` target that prints the headline, on the tiny run's
    report: SemAlign's held-out KL change and its paired benchmark test, nothing of the table."""
    import re
    import subprocess
    from pathlib import Path

    root, _, _ = reproduced_copy
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    printer = re.search(r"^\t@(awk .*)$", makefile, re.M).group(1)
    out = subprocess.run(["bash", "-c", printer], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.startswith("### Headline: SemAlign against the untouched target")
    assert "- semalign-s0 on toy, held-out KL(source ‖ model): " in out and "exact McNemar p = " in out
    assert "| model |" not in out and out.count("\n- ") == 2
