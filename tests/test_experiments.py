"""Experiment comparison on the tiny project: DVCLive training logs, the analysis stage's
figures through `dvc plots`, a clean `dvc exp show`, and a queued ablation sweep."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import yaml
from dvc_project import ROOT, RUNNING, sh

QUALITY = {"target_kl", "semalign_kl", "target_top1", "semalign_top1", "kl_reduction"}
ANALYSIS = {"cka_paired_before", "cka_paired_after"}
KEY_PARAMS = {"frontier.objective", "pairing.strategy", "fisher.top_k", "fisher.tau", "frontier.steps"}
PLOTS = {"plots/quality/toy-s0.json", "plots/analysis/cka_before/toy-s0.json", "plots/analysis/cka_after/toy-s0.json",
         "plots/analysis/cka_heatmap/toy-s0.png", "plots/analysis/attribution/toy-s0.json",
         "plots/analysis/pairing/toy-s0.json", "plots/analysis/frontier_loss/toy-s0.json",
         "plots/curve/toy-s0.json", "plots/curve_png/toy-s0.png",
         "plots/results.csv", "plots/results.png",
         "dvclive/toy/frontier/s0/toy-s0-L01/plots/metrics/loss.tsv",  # the stages' own plots: their
         "dvclive/toy/frontier/s0/toy-s0-L02/plots/metrics/loss.tsv"}  # per-step logs (DVCLive)


def read(root: Path, rel: str):
    return json.loads((root / rel).read_text())


def flat_metrics(row: dict) -> dict:
    """{metric: value} over every metrics file of one `dvc exp show --json` revision."""
    files = (row.get("data") or {}).get("metrics") or {}
    return {k: v for f in files.values() for k, v in (f.get("data") or {}).items()}


def objective_of(row: dict) -> str:
    return row["data"]["params"]["params.yaml"]["data"]["frontier"]["objective"]


def test_frontier_logs_and_analysis_figures_render(reproduced_project, tmp_path):
    root, env, ran = reproduced_project
    assert "analysis@toy-0" in ran
    assert (root / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()  # DVCLive left it alone
    steps = yaml.safe_load((root / "params.yaml").read_text())["frontier"]["steps"]
    curves = {}
    for key in ("toy-s0-L01", "toy-s0-L02"):
        stage_dir = root / "artifacts/toy/frontier/s0" / key
        with open(root / "dvclive/toy/frontier/s0" / key / "plots/metrics/loss.tsv", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        curves[key] = [float(r["loss"]) for r in rows]
        assert curves[key] == read(stage_dir, "log.json")["losses"] and len(rows) == steps

    pairing, scores = read(root, "artifacts/toy/pairing.json"), read(root, "artifacts/toy/attribution.json")["scores"]
    assert [r["source_layer"] for r in read(root, "plots/analysis/pairing/toy-s0.json")] == pairing["pairs"]
    assert [r["score"] for r in read(root, "plots/analysis/attribution/toy-s0.json")] == scores
    losses = read(root, "plots/analysis/frontier_loss/toy-s0.json")
    assert {k: [r["loss"] for r in losses if r["layer"] == k] for k in curves} == curves
    before, after = read(root, "plots/analysis/cka_before/toy-s0.json"), read(root, "plots/analysis/cka_after/toy-s0.json")
    cells = {(r["source_layer"], r["target_layer"]) for r in after}
    assert cells == {(s, t) for s in range(1, 4) for t in range(1, 3)} == {(r["source_layer"], r["target_layer"]) for r in before}
    assert all(math.isfinite(r["cka"]) and -0.5 < r["cka"] <= 1.0 + 1e-9 for r in before + after)
    assert [r["cka"] for r in before] != [r["cka"] for r in after]  # the transfer changed the target
    assert set(read(root, "metrics/analysis/toy-s0.json")) == ANALYSIS
    assert (root / "plots/analysis/cka_heatmap/toy-s0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shown = json.loads(sh(root, env, "dvc", "plots", "show", "--json", "-o", str(tmp_path / "json")))
    assert not shown.get("errors") and set(shown["data"]) == PLOTS
    for plot_id, renders in shown["data"].items():
        for r in renders:
            assert r["type"] == "image" or r["content"]["data"]["values"], plot_id
    sh(root, env, "dvc", "plots", "show", "-o", str(tmp_path / "html"))
    html = (tmp_path / "html" / "index.html").read_text()
    assert "vegaEmbed" in html and "cka_heatmap_toy-s0.png" in html and "linear CKA" in html


def test_exp_show_has_every_metric_and_the_key_params_without_noise(reproduced_project):
    root, env, _ = reproduced_project
    table = list(csv.DictReader(io.StringIO(sh(root, env, "bash", "scripts/exp_show.sh", "--csv"))))
    columns = set(table[0])
    assert QUALITY | ANALYSIS | KEY_PARAMS <= columns
    noise = [c for c in columns if c.startswith(("chain.", "artifacts/", "data/", "models/", "pipeline/", "stages/"))]
    assert noise == []
    workspace = next(r for r in table if r["rev"] == "workspace")
    assert all(workspace[m] for m in QUALITY | ANALYSIS)


def test_queued_objective_sweep(reproduced_project, tmp_path):
    root, env, _ = reproduced_project
    out = sh(root, dict(env, WAIT="1", WAIT_TIMEOUT="480"), "bash", "scripts/ablations.sh",
             "frontier.objective=fisher,cosine")
    names = [line.split(":")[0] for line in out.splitlines() if line.endswith(": Success")]
    assert len(names) == 2, out

    rows = json.loads(sh(root, env, "dvc", "exp", "show", "--json"))
    exps = {e["name"]: e["revs"][0] for row in rows for e in (row.get("experiments") or []) if e["name"] in names}
    by_objective = {objective_of(rev): flat_metrics(rev) for rev in exps.values()}
    assert set(by_objective) == {"fisher", "cosine"}
    for metrics in by_objective.values():
        assert QUALITY | ANALYSIS <= set(metrics)  # cached metrics files reach the experiment commits
    assert by_objective["fisher"]["semalign_kl"] != by_objective["cosine"]["semalign_kl"]
    assert by_objective["fisher"]["cka_paired_after"] != by_objective["cosine"]["cka_paired_after"]
    workspace = flat_metrics(rows[0])
    assert by_objective["fisher"]["semalign_kl"] == workspace["semalign_kl"]  # the baseline point

    # the fisher point equals the baseline: nothing of it was recomputed
    fisher = next(n for n, rev in exps.items() if objective_of(rev) == "fisher")
    assert RUNNING.findall(sh(root, env, "dvc", "queue", "logs", fisher)) == []

    diff = json.loads(sh(root, env, "dvc", "plots", "diff", *names, "--json", "-o", str(tmp_path / "diff")))
    revs = {v["rev"] for r in diff["data"]["plots/analysis/cka_after/toy-s0.json"] for v in r["content"]["data"]["values"]}
    assert revs == set(names)
