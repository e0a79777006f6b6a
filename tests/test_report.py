"""The results table: gap-to-source arithmetic, seed grouping, Markdown/CSV/plot outputs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from pipeline.artifacts import write_json
from pipeline.benchmarks import PRIMARY
from pipeline.errors import PipelineError
from pipeline.report import collect, markdown, seed_group, table
from pipeline.stats import proportion

ROOT = Path(__file__).resolve().parents[1]
N = 10000  # large n so the paper's two-decimal percentages are exact counts
PAPER = {  # SemAlign v1 Table 1 (paper-results.md): MMLU, GSM8K, HumanEval, MBPP
    "source": (52.90, 20.55, 18.75, 19.20),
    "target": (44.20, 16.07, 14.05, 17.80),
    "seeking": (49.60, 28.23, 15.44, 20.60),
    "laten": (44.40, 20.47, 14.63, 18.20),
    "semalign": (50.30, 19.21, 17.34, 18.78),
}


def write_metrics(root: Path, model: str, scores) -> None:
    for bench, score in zip(("mmlu", "gsm8k", "humaneval", "mbpp"), scores):
        if score is None:
            continue
        m = {**proportion(round(score * N / 100), N, PRIMARY[bench]), "n": N}
        write_json(root / model / f"{bench}.json", {bench: {model: m}})


@pytest.fixture
def paper_metrics(tmp_path):
    for model, scores in PAPER.items():
        write_metrics(tmp_path / "eval", model, scores)
    return tmp_path / "eval"


def test_gap_to_source_reproduces_the_paper(paper_metrics):
    tab = table(collect(paper_metrics), "source", ["source", "target", "semalign"]).set_index("model")
    assert list(tab.index) == ["source", "target", "semalign", "laten", "seeking"]
    # paper-results.md: SemAlign 1.44, SEEKING about 3.92, LaTen about 3.43
    assert math.isclose(tab.loc["semalign", "gap"], 1.4425, abs_tol=1e-9)
    assert math.isclose(tab.loc["seeking", "gap"], 3.9225, abs_tol=1e-9)
    assert math.isclose(tab.loc["laten", "gap"], 3.425, abs_tol=1e-9)
    assert tab.loc["source", "gap"] == 0
    assert math.isclose(tab.loc["target", "mean"], sum(PAPER["target"]) / 4)
    assert tab.loc["semalign", "mmlu_n"] == N
    assert tab.loc["semalign", "mmlu_ci95_low"] < 50.30 < tab.loc["semalign", "mmlu_ci95_high"]


def test_seed_runs_are_grouped_with_mean_and_std(tmp_path):
    write_metrics(tmp_path, "source", (50.0, 20.0, 20.0, 20.0))
    write_metrics(tmp_path, "semalign-s1", (48.0, 20.0, 18.0, 20.0))  # gap (2+0+2+0)/4 = 1.0
    write_metrics(tmp_path, "semalign-s2", (52.0, 22.0, 20.0, 20.0))  # gap (2+2+0+0)/4 = 1.0
    write_metrics(tmp_path, "semalign-s3", (50.0, 18.0, 22.0, 20.0))  # gap (0+2+2+0)/4 = 1.0
    tab = table(collect(tmp_path), "source").set_index("model")
    assert list(tab.index) == ["source", "semalign"] and tab.loc["semalign", "runs"] == 3
    assert math.isclose(tab.loc["semalign", "mmlu"], 50.0) and math.isclose(tab.loc["semalign", "mmlu_std"], 2.0)
    # per-run gaps (all 1.0) averaged; the gap of the averaged scores would be 0
    assert math.isclose(tab.loc["semalign", "gap"], 1.0) and math.isclose(tab.loc["semalign", "gap_std"], 0.0)
    assert math.isnan(tab.loc["semalign", "mmlu_ci95_low"])  # CIs only for single runs
    assert seed_group("semalign-s12") == "semalign" and seed_group("lora-rank-16") == "lora-rank-16"
    md = markdown(tab.reset_index(), "source")
    assert "semalign (3 seeds)" in md and "50.00 ± 2.00 (n=10000×3)" in md


def test_missing_benchmarks_and_source(tmp_path):
    write_metrics(tmp_path, "target", (40.0, None, None, 10.0))
    tab = table(collect(tmp_path), "source").set_index("model")
    assert math.isclose(tab.loc["target", "mean"], 25.0) and math.isnan(tab.loc["target", "gap"])
    with pytest.raises(PipelineError, match="no evaluation metrics"):
        collect(tmp_path / "nothing")


def test_report_stage_writes_markdown_csv_and_plots(paper_metrics, tmp_path):
    spec = importlib.util.spec_from_file_location("report_stage", ROOT / "stages" / "report.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    out = tmp_path / "out"
    assert stage.main(["--metrics-dir", str(paper_metrics), "--params", str(tmp_path / "none.yaml"),
                       "--out-md", str(out / "results.md"), "--out-csv", str(out / "results.csv"),
                       "--out-json", str(out / "results.json"),
                       "--plot-csv", str(out / "plots.csv"), "--plot-png", str(out / "results.png")]) == 0
    md = (out / "results.md").read_text()
    assert "| model | mmlu (acc) | gsm8k (em_flexible) | humaneval (pass_at_1) | mbpp (pass_at_1) | mean |" in md
    assert "| semalign | 50.30 [" in md and "(n=10000)" in md and "| 1.44 |" in md
    csv = pd.read_csv(out / "results.csv").set_index("model")
    assert math.isclose(csv.loc["seeking", "gap"], 3.9225, abs_tol=1e-4)
    summary = json.loads((out / "results.json").read_text())["results"]
    assert summary["semalign"]["gap_to_source"] == 1.4425 and summary["source"]["gap_to_source"] == 0.0
    plots = pd.read_csv(out / "plots.csv")
    assert list(plots.columns[:4]) == ["label", "model", "benchmark", "score"] and len(plots) == 20
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_cost(root: Path, stage: str, item: str, method: str, task, seed, wall_s: float, peak_mb: float) -> None:
    write_json(root / stage / f"{item}.json", {"stage": f"{stage}@{item}", "method": method, "task": task,
                                               "seed": seed, "wall_s": wall_s, "peak_rss_mb": peak_mb})


def test_cost_columns_sum_a_methods_stages_per_seed(tmp_path):
    from pipeline.report import collect_costs, method_costs

    costs = tmp_path / "cost"
    write_cost(costs, "align", "align", "semalign", None, None, 60.0, 6000.0)
    for task in ("mmlu", "gsm8k"):
        write_cost(costs, "extract", task, "extract", task, None, 120.0, 11000.0)
        write_cost(costs, "fisher", task, "semalign", task, None, 30.0, 4000.0)
        for seed, wall in ((0, 10.0), (1, 20.0)):
            write_cost(costs, "frontier", f"{task}-s{seed}-L01", "semalign", task, seed, wall, 3000.0)
            write_cost(costs, "export", f"{task}-s{seed}", "semalign", task, seed, wall, 3500.0)
    write_cost(costs, "baseline-sft", "mmlu-s0", "sft", "mmlu", 0, 300.0, 9000.0)
    write_cost(costs, "baseline-kd", "mmlu-s0", "kd", "mmlu", 0, 100.0, 5000.0)
    per = method_costs(collect_costs(costs)).set_index(["method", "seed"])
    # align 60 + 2 x (extract 120 + fisher 30 + frontier + export)
    assert per.loc[("semalign", 0), "wall_s"] == 60 + 2 * (120 + 30 + 10 + 10)
    assert per.loc[("semalign", 1), "wall_s"] == 60 + 2 * (120 + 30 + 20 + 20)
    assert per.loc[("semalign", 0), "peak_rss_mb"] == 11000.0
    assert per.loc[("sft", 0), "wall_s"] == 300.0 and per.loc[("sft", 0), "peak_rss_mb"] == 9000.0
    assert per.loc[("kd", 0), "wall_s"] == 100.0 + 120.0  # KD reads mmlu's cached extraction only
    assert "extract" not in per.index.get_level_values("method")

    metrics = tmp_path / "eval"
    for model, scores in (("source", (50.0, 20.0, None, None)), ("semalign-s0", (48.0, 20.0, None, None)),
                          ("semalign-s1", (46.0, 20.0, None, None)), ("sft-s0", (40.0, None, None, None))):
        write_metrics(metrics, model, scores)
    tab = table(collect(metrics), "source", costs=collect_costs(costs)).set_index("model")
    assert math.isclose(tab.loc["semalign", "wall_min"], (400 + 440) / 2 / 60)
    assert math.isclose(tab.loc["semalign", "wall_min_std"], math.sqrt(2 * (20 / 60) ** 2))
    assert math.isclose(tab.loc["sft", "peak_gb"], 9000 / 1024) and math.isnan(tab.loc["sft", "wall_min_std"])
    assert math.isnan(tab.loc["source", "wall_min"])
    md = markdown(tab.reset_index(), "source")
    assert "cost: wall (min)" in md and "| 7.00 ± 0.47 | 10.74 ± 0.00 |" in md


def test_the_table_carries_the_code_sandbox_isolation(tmp_path):
    """Each code-benchmark score says which sandbox isolation judged it (from its metrics), and
    a run judged without kernel isolation is flagged under the table. Fails on a report that
    drops ``sandbox_isolation``: no column, no note."""
    for model, modes in (("source", ("namespaces+nobody", "namespaces+nobody")),
                         ("semalign-s0", ("namespaces+nobody", "process"))):
        write_metrics(tmp_path, model, (50.0, 20.0, 18.0, 19.0))
        for bench, mode in zip(("humaneval", "mbpp"), modes):
            path = tmp_path / model / f"{bench}.json"
            record = json.loads(path.read_text())
            record[bench][model]["sandbox_isolation"] = mode
            path.write_text(json.dumps(record))
    tab = table(collect(tmp_path), "source")
    assert dict(zip(tab["model"], tab["sandbox"])) == {"source": "namespaces+nobody",
                                                       "semalign": "namespaces+nobody, process"}
    md = markdown(tab, "source")
    assert "code sandbox isolation (HumanEval, MBPP): `namespaces+nobody` for source, semalign; " \
           "`process` for semalign." in md
    assert "**Warning**: semalign had generated code judged without kernel isolation" in md
