"""The results table: gap-to-source arithmetic, seed grouping, Markdown/CSV/plot outputs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.artifacts import write_json
from pipeline.evaluation.benchmarks import PRIMARY
from pipeline.core.errors import PipelineError
from pipeline.evaluation.report import collect, markdown, seed_group, table
from pipeline.evaluation.stats import proportion

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
    from pipeline.evaluation.report import collect_costs, method_costs

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


# --- budgets and paired comparisons -------------------------------------------------------
def small_params() -> dict:
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"] = ["mmlu"]
    params["tasks_config"] = {"mmlu": {"attribution": 2, "transfer": 8, "validation": 4, "evaluation": 10}}
    params["frontier"].update(steps=4, batch_size=4, layer_from=1, layer_weight=1.0, kl_from=0)
    params["baselines"]["enabled"] = {"sft": ["mmlu"], "kd": [], "hidden_kd": [], "seeking": [], "laten": []}
    params["baselines"]["sft"]["train"].update(epochs=3, max_steps=0, batch_size=4)
    return params


def test_budget_columns_beside_the_cost():
    """SemAlign on 2 blocks x 4 steps x 4 = 32 examples, 8 steps; SFT 3 epochs x 2 steps of 4 =
    24 examples, 6 steps; the reference rows have none. Rejects a budget attached to the wrong
    method, or SemAlign's per-block numbers shown as its total."""
    from pipeline.evaluation import budget
    from pipeline.evaluation.report import budget_frame, budget_markdown

    budgets = budget_frame(budget.run_budgets(small_params(), {"mmlu": 2}))
    long = pd.DataFrame([{"model": m, "benchmark": "mmlu", "score": 40.0, "ci95_low": 30.0, "ci95_high": 50.0,
                          "n": 10} for m in ("source", "target", "semalign-s0", "sft-s0")])
    tab = table(long, "source", ["source", "target", "semalign", "sft"], budgets=budgets).set_index("model")
    assert (tab.loc["semalign", "examples_seen"], tab.loc["semalign", "optimizer_steps"]) == (32, 8)
    assert (tab.loc["sft", "examples_seen"], tab.loc["sft", "optimizer_steps"]) == (24, 6)
    assert math.isnan(tab.loc["target", "examples_seen"])
    md = markdown(tab.reset_index(), "source")
    assert "| budget: examples seen | optimizer steps |" in md and "| 32 | 8 |" in md and "| 24 | 6 |" in md
    section = budget_markdown(budgets)
    assert "| mmlu | semalign | 0 | 8 | 2.00 | 32 | 8 | 4 | trained blocks 2, steps per block 4 |" in section
    assert "| mmlu | sft | 0 | 8 | 3.00 | 24 | 6 | 4 |" in section


def write_samples(root: Path, model: str, bench: str, verdicts) -> None:
    from pipeline.core.data import write_jsonl

    rows = [{"id": f"{bench}-{i}", "correct": v} for i, v in enumerate(verdicts)]
    write_jsonl(root / model / bench / "samples.jsonl", rows)


def write_heldout(root: Path, model: str, task: str, kl, top1, positions) -> None:
    write_json(root / model / f"{task}.json", {"model_key": model, "task": task,
                                               "ids": [f"v{i}" for i in range(len(kl))],
                                               "kl": kl, "top1": top1, "positions": positions})


@pytest.fixture
def paired_inputs(paper_metrics, tmp_path):
    """Target and SemAlign (seed 0) on 10 MMLU items and 4 GSM8K items, held-out records on mmlu."""
    samples, heldout = tmp_path / "samples", tmp_path / "heldout"
    write_samples(samples, "target", "mmlu", [True, True, False, False, True] + [False] * 5)
    write_samples(samples, "semalign-s0", "mmlu", [True, False, True, True, True] + [True] * 5)
    # GSM8K verdicts: the headline is "flexible"; "strict" disagrees on purpose
    write_samples(samples, "target", "gsm8k", [{"flexible": f, "strict": not f} for f in (True, False, False, False)])
    write_samples(samples, "semalign-s0", "gsm8k", [{"flexible": f, "strict": True} for f in (True, True, True, False)])
    write_heldout(heldout, "target", "mmlu", [4.0, 6.0], [1.0, 3.0], [2, 6])
    write_heldout(heldout, "semalign-s0", "mmlu", [2.0, 3.0], [2.0, 6.0], [2, 6])
    return samples, heldout


def run_report(tmp_path, metrics, samples, heldout, params: Path):
    spec = importlib.util.spec_from_file_location("report_stage", ROOT / "stages" / "report.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    out = tmp_path / "out"
    status = stage.main(["--metrics-dir", str(metrics), "--params", str(params), "--cost-dir", str(tmp_path / "nocost"),
                         "--heldout-dir", str(heldout), "--samples-dir", str(samples),
                         "--chain", str(tmp_path / "chain.yaml"),
                         "--out-md", str(out / "results.md"), "--out-csv", str(out / "results.csv"),
                         "--out-json", str(out / "results.json"), "--plot-csv", str(out / "plots.csv"),
                         "--plot-png", str(out / "results.png")])
    return status, out


def test_report_shows_paired_tests_and_heldout_intervals(paper_metrics, paired_inputs, tmp_path):
    """MMLU: 7 items SemAlign alone gets right, 1 the target alone: +60.0 points, exact McNemar
    p = 2 * 9 / 256 = 0.0703, not significant. GSM8K on the flexible verdicts: 2 gained, 0
    lost, +50.0, p = 0.5 (the strict ones would give 3 gained). Held-out: KL 10/8 -> 5/8 =
    -0.6250, top-1 +50.0 points. Rejects verdicts read from "strict", a target-minus-model
    sign, an unpaired test and a missing "not significant"."""
    samples, heldout = paired_inputs
    status, out = run_report(tmp_path, paper_metrics, samples, heldout, tmp_path / "none.yaml")
    assert status == 0
    md = (out / "results.md").read_text()
    assert "| mmlu | semalign-s0 | 10 | +60.0 [" in md and "| 7 / 1 | 0.0703 | not significant |" in md
    assert "| gsm8k | semalign-s0 | 4 | +50.0 [" in md and "| 2 / 0 | 0.5 | not significant |" in md
    assert "| mmlu | target | 1.2500 | (reference) |" in md
    assert "| mmlu | semalign-s0 | 0.6250 | -0.6250 [" in md
    # what n can detect, at the observed discordance (8 of 10 items; 2 of 4 on GSM8K)
    assert "- mmlu: n = 10, discordance 80% observed: a difference of 73.8 points or more is detected" in md
    assert "- gsm8k: n = 4, discordance 50% observed: no difference is detected" in md
    summary = json.loads((out / "results.json").read_text())
    assert summary["paired"]["mmlu"]["semalign-s0"]["p"] == pytest.approx(2 * 9 / 256, abs=1e-6)
    assert summary["heldout"]["mmlu"]["semalign-s0"]["kl_diff"] == pytest.approx(-0.625)
    assert "results" in summary and "### Budgets" not in md  # no params.yaml, no chain: no budget stated
    # the headline: SemAlign's runs only, the target's KL recovered from the difference, the verdicts
    top = md[:md.index("| model |")]
    assert top.startswith("### Headline: SemAlign against the untouched target")
    assert ("- semalign-s0 on mmlu, held-out KL(source ‖ model): 1.2500 (target) -> 0.6250, change -0.6250 [95% CI "
            in top)
    assert "- semalign-s0 on gsm8k: accuracy +50.0 points vs target [95% CI " in top
    assert "2 gained / 0 lost, exact McNemar p = 0.5, not significant (n = 4)" in top


def test_report_refuses_items_that_do_not_pair(paper_metrics, paired_inputs, tmp_path):
    """A model evaluated on other items than the target (here one fewer) fails the report with a
    fix, instead of being paired on the overlap or by position."""
    samples, heldout = paired_inputs
    write_samples(samples, "sft-s0", "mmlu", [True] * 9)  # one item short
    status, _ = run_report(tmp_path, paper_metrics, samples, heldout, tmp_path / "none.yaml")
    assert status == 2


def test_report_stage_states_budgets_from_params_and_chain(paper_metrics, paired_inputs, tmp_path):
    """The stage reads the target depth from chain.yaml (2 blocks here: 32 examples, not the
    24-block 384) and the budget from params.yaml."""
    import yaml

    from pipeline.core.chain import build_chain

    samples, heldout = paired_inputs
    params = small_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump({"chain": build_chain(["mmlu"], 2, [0])}))
    status, out = run_report(tmp_path, paper_metrics, samples, heldout, tmp_path / "params.yaml")
    assert status == 0
    md = (out / "results.md").read_text()
    assert "### Budgets" in md and "| mmlu | sft | 0 | 8 | 3.00 | 24 | 6 | 4 |" in md
    csv = pd.read_csv(out / "results.csv").set_index("model")
    assert csv.loc["semalign", "examples_seen"] == 32 and csv.loc["semalign", "optimizer_steps"] == 8


def test_the_headline_has_every_semalign_run_and_no_other_method():
    """Two SemAlign seeds and a baseline: one line per SemAlign run and measure, none for SFT;
    an interval that straddles zero says so."""
    from pipeline.evaluation.comparisons import headline

    heldout = pd.DataFrame([
        {"task": "gsm8k", "model": "target", "kl": 0.25, "top1": 0.8, "examples": 24, "positions": 2000},
        *[{"task": "gsm8k", "model": m, "kl": 0.25 + d, "top1": 0.8, "examples": 24, "positions": 2000,
           "kl_diff": d, "kl_diff_low": lo, "kl_diff_high": hi}
          for m, d, lo, hi in (("semalign-s0", -0.02, -0.04, -0.01), ("semalign-s1", -0.01, -0.03, 0.01),
                               ("sft-s0", 0.05, 0.03, 0.07))]])
    paired = pd.DataFrame([{"benchmark": "gsm8k", "model": m, "n": 32, "diff": -0.125, "ci_low": -0.277,
                            "ci_high": -0.005, "model_only": 0, "target_only": 4, "p": 0.125, "significant": False}
                           for m in ("semalign-s0", "sft-s0")])
    top = headline(heldout, paired).splitlines()
    assert [line.split(",")[0] for line in top[2:]] == [
        "- semalign-s0 on gsm8k", "- semalign-s1 on gsm8k", "- semalign-s0 on gsm8k: accuracy -12.5 points vs target [95% CI -27.7"]
    assert top[2].endswith("(24 validation examples, 2000 positions)") and "0.2500 (target) -> 0.2300" in top[2]
    assert "(not significant)" in top[3] and "(not significant)" not in top[2]
    assert headline(heldout[heldout["model"] == "target"], paired.iloc[0:0]) == ""


def test_semalign_against_each_baseline_on_the_same_items(paper_metrics, paired_inputs, tmp_path):
    """SemAlign minus SFT, on held-out (KL 5/8 vs 7/8: -0.2500; top-1 8/8 vs 6/8: +25.0 points)
    and MMLU (SemAlign alone right on 3 items, SFT alone on none: +30.0, p = 0.25). No row for
    the target or the source, none pairing SemAlign with itself. Rejects a baseline-minus-SemAlign
    sign and a baseline left out."""
    samples, heldout = paired_inputs
    write_samples(samples, "sft-s0", "mmlu", [True, False, True, False, True, True, True, False, True, False])
    write_samples(samples, "source", "mmlu", [True] * 10)
    write_heldout(heldout, "sft-s0", "mmlu", [2.0, 5.0], [1.0, 5.0], [2, 6])
    status, out = run_report(tmp_path, paper_metrics, samples, heldout, tmp_path / "none.yaml")
    assert status == 0
    md = (out / "results.md").read_text()
    section = md[md.index("### SemAlign against each baseline"):]
    rows = [line for line in section.splitlines() if line.startswith("| mmlu")]
    assert len(rows) == 2 and all("| semalign-s0 | sft-s0 |" in r for r in rows)
    assert rows[0].startswith("| mmlu | semalign-s0 | sft-s0 | -0.2500 [") and "| +25.0 [" in rows[0]
    assert "| 10 | +30.0 [" in rows[1] and "| 3 / 0 | 0.25, not significant |" in rows[1]


def test_records_that_do_not_pair_are_refused_naming_both_models(paired_inputs):
    """Held-out records on other validation examples, samples on other items: each comparison
    (with the target, and SemAlign against a baseline) names the two models and the counts."""
    from pipeline.evaluation.comparisons import head_to_head, heldout_table, paired_benchmarks

    samples, heldout = paired_inputs
    write_heldout(heldout, "sft-s0", "mmlu", [2.0], [1.0], [2])  # one example short
    with pytest.raises(PipelineError, match="sft-s0 and target were scored on different mmlu validation examples"):
        heldout_table(heldout)
    with pytest.raises(PipelineError, match="semalign-s0 and sft-s0 were scored on different mmlu validation"):
        head_to_head(heldout, samples)
    (heldout / "sft-s0" / "mmlu.json").unlink()
    write_samples(samples, "sft-s0", "mmlu", [True] * 9)  # one item short
    with pytest.raises(PipelineError, match=r"sft-s0 and target were evaluated on different mmlu items \(9 vs 10\)"):
        paired_benchmarks(samples)
    with pytest.raises(PipelineError, match=r"semalign-s0 and sft-s0 were evaluated on different mmlu items \(10 vs 9\)"):
        head_to_head(heldout, samples)
