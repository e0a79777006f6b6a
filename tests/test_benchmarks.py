"""Benchmark protocols end to end (generation patched where a random model can't answer),
and the evaluate stage's CLI on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from eval_helpers import gsm8k_record, humaneval_record, mbpp_record, mmlu_record, tiny_model_dir

import pipeline.evaluation.benchmarks as benchmarks
from pipeline.evaluation.benchmarks import Settings, check_records, evaluate, select
from pipeline.core.data import write_jsonl
from pipeline.core.errors import PipelineError
from pipeline.evaluation.generation import Generation, GenerationRun
from pipeline.core.loading import load_model, load_tokenizer
from pipeline.evaluation.sandbox import Limits, Sandbox

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir), "float32"), load_tokenizer(str(tiny_dir))


def canned(monkeypatch, texts: list[str]) -> None:
    """Make the protocol's generation return these texts, in order."""
    def fake_generate(model, tokenizer, prompts, *args, **kwargs):
        assert len(prompts) == len(texts)
        return GenerationRun([Generation(t, 5, "eos", 10, False) for t in texts], 1.0)
    monkeypatch.setattr(benchmarks, "generate", fake_generate)


def test_gsm8k_strict_and_flexible(tiny, monkeypatch):
    model, tok = tiny
    records = [gsm8k_record(i, a) for i, a in enumerate(["1234", "7", "18", "5"])]
    canned(monkeypatch, ["Sum is $1,234. The answer is $1,234.",  # both right
                         "7 apples, then 2 leave, so 5",  # strict none, flexible 5: wrong
                         "It is 18 in total.",  # flexible right, strict none
                         "The answer is 5. Check: 5 + 1 = 6"])  # strict right, flexible 6 wrong
    result = evaluate("gsm8k", model, tok, records, Settings(), progress=False)
    assert result.metrics["em_flexible"] == 50.0 and result.metrics["em_flexible_correct"] == 2
    assert result.metrics["em_strict"] == 50.0 and result.metrics["n"] == 4
    assert [s["correct"] for s in result.samples] == [
        {"flexible": True, "strict": True}, {"flexible": False, "strict": False},
        {"flexible": True, "strict": False}, {"flexible": False, "strict": True}]
    assert result.samples[0]["prompt"].endswith("assistant\n")  # chat template, zero-shot


@pytest.mark.parametrize("benchmark", ["humaneval", "mbpp"])
def test_code_pass_at_1_runs_the_tests(tiny, monkeypatch, benchmark):
    model, tok = tiny
    make = humaneval_record if benchmark == "humaneval" else mbpp_record
    records = [make(i) for i in range(4)]
    body = "return a + b" if benchmark == "humaneval" else "return n % 2 == 0"
    wrong = "return a - b" if benchmark == "humaneval" else "return n % 2 == 1"
    sig = records[0]["meta"]["prompt"].splitlines()[0]
    canned(monkeypatch, [
        f"```python\n{sig}\n    {body}\n```",  # full rewrite: passes
        f"    {body}\n",  # bare body completing the prompt: passes
        f"```python\n{sig}\n    {wrong}\n```",  # wrong: fails
        f"```python\n{sig}\n    while True:\n        pass\n```",  # hangs: timeout, fails
    ])
    # The hang meets the CPU limit first, by design, and the wall clock has room for a busy
    # machine; either limit gives `timeout` (before, the CPU limit's SIGKILL read `killed`).
    sandbox = Sandbox(Limits(timeout_s=10, cpu_s=2, memory_mb=256))
    result = evaluate(benchmark, model, tok, records, Settings(sandbox_workers=2), sandbox, progress=False)
    assert [s["correct"] for s in result.samples] == [True, True, False, False]
    assert result.metrics["pass_at_1"] == 50.0 and result.metrics["n"] == 4
    assert [s["verdict"]["status"] for s in result.samples] == ["passed", "passed", "failed", "timeout"]
    assert result.samples[1]["extracted"]["mode"] == "completion"
    assert result.details["sandbox"]["isolation"] == sandbox.mode == result.metrics["sandbox_isolation"]


def test_code_verdicts_come_from_the_tests_not_the_exit_status(tiny, monkeypatch):
    """A wrong answer that exits 0 before the tests is judged failed by the benchmark
    protocol too (it used to run code + tests as one program and read its exit status:
    checked, this sample was correct then). Extraction drops a bare ``sys.exit(0)``
    statement, but not one inside an assignment."""
    model, tok = tiny
    records = [humaneval_record(0)]
    sig = records[0]["meta"]["prompt"].splitlines()[0]
    canned(monkeypatch, [f"```python\n{sig}\n    return a - b\n\nimport sys\n_ = sys.exit(0)\n```"])
    sandbox = Sandbox(Limits(timeout_s=10, cpu_s=2, memory_mb=256))
    result = evaluate("humaneval", model, tok, records, Settings(), sandbox, progress=False)
    assert [s["correct"] for s in result.samples] == [False]
    assert "before the tests ran" in result.samples[0]["verdict"]["reason"]


def test_records_are_checked_before_any_work():
    bad = mmlu_record(0, "law", "A")
    del bad["meta"]["choices"]
    with pytest.raises(PipelineError, match="lacks meta"):
        check_records("mmlu", [bad], "x.jsonl")
    with pytest.raises(PipelineError, match="no records"):
        check_records("gsm8k", [], "x.jsonl")
    with pytest.raises(PipelineError, match="unknown benchmark"):
        check_records("arc", [bad], "x.jsonl")
    assert [r["id"] for r in select([gsm8k_record(i, "1") for i in range(5)], 2)] == ["gsm8k-0", "gsm8k-1"]
    with pytest.raises(PipelineError, match="unknown evaluation setting"):
        Settings.from_params({"max_tokens": 3}, 8)


def _stage(tmp_path: Path, tiny_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m stages.evaluate ...`` run in ``tmp_path``, with this checkout's code."""
    return subprocess.run([sys.executable, "-m", "stages.evaluate", *args, "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                               "PYTHONPATH": str(ROOT)})


def test_evaluate_stage_writes_metrics_and_samples(tmp_path, tiny_dir, monkeypatch):
    params = {"evaluation": {"batch_size": 4,
                             "benchmarks": {"mmlu": {"limit": 3}, "gsm8k": {"limit": 2, "max_new_tokens": 8}},
                             "sandbox": {"timeout_s": 5}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_jsonl(tmp_path / "data/tasks/mmlu/evaluation.jsonl", [mmlu_record(i, "law", "B") for i in range(5)])
    write_jsonl(tmp_path / "data/tasks/gsm8k/evaluation.jsonl", [gsm8k_record(i, "3") for i in range(3)])
    # gsm8k through the real command line; mmlu in-process (saves a 10 s interpreter start).
    proc = _stage(tmp_path, tiny_dir, "tiny", "gsm8k", "--model", str(tiny_dir))
    assert proc.returncode == 0, proc.stderr
    monkeypatch.chdir(tmp_path)
    assert _stage_module().main(["tiny", "mmlu", "--model", str(tiny_dir), "--no-progress"]) == 0
    for bench in ("mmlu", "gsm8k"):
        metrics = json.loads((tmp_path / f"metrics/eval/tiny/{bench}.json").read_text())
        inner = metrics[bench]["tiny"]
        assert inner["n"] == {"mmlu": 3, "gsm8k": 2}[bench]
        primary = benchmarks.PRIMARY[bench]
        assert inner[f"{primary}_ci95_low"] <= inner[primary] <= inner[f"{primary}_ci95_high"]
        lines = (tmp_path / f"artifacts/eval/tiny/{bench}/samples.jsonl").read_text().splitlines()
        assert len(lines) == inner["n"]
        sample = json.loads(lines[0])
        assert {"id", "prompt", "extracted", "correct"} <= set(sample)
        details = json.loads((tmp_path / f"artifacts/eval/tiny/{bench}/details.json").read_text())
        assert details["metrics"] == inner and details["settings"]["batch_size"] == 4


def _stage_module():
    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_stage_reports_user_errors_before_loading(tmp_path, tiny_dir, monkeypatch, capsys):
    stage = _stage_module()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pipeline.core.loading.load_model", lambda *a, **k: pytest.fail("model loaded before checks"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluation": {}}))
    assert stage.main(["tiny", "mmlu", "--model", str(tiny_dir)]) == 2
    err = capsys.readouterr().err
    assert "task file" in err and "fix:" in err
    assert stage.main(["nomodel", "mmlu"]) == 2
    assert "models/nomodel" in capsys.readouterr().err
    assert stage.main(["tiny", "arc", "--model", str(tiny_dir)]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    bad = mmlu_record(0, "law", "E")
    write_jsonl(tmp_path / "data/tasks/mmlu/evaluation.jsonl", [bad])
    assert stage.main(["tiny", "mmlu", "--model", str(tiny_dir)]) == 2
    assert "answer in A-D" in capsys.readouterr().err


def test_evaluate_stage_warns_on_a_fallback_and_can_require_kernel_isolation(tmp_path, tiny_dir, monkeypatch,
                                                                             capsys):
    """Where kernel isolation is unavailable (here: no unshare), ``isolation: namespaces``
    stops the stage before any model is loaded, and ``auto`` runs it with a warning, the
    mode in details.json and in the metrics, whence the results table takes it."""
    import pipeline.evaluation.sandbox as sandbox_module

    stage = _stage_module()
    monkeypatch.chdir(tmp_path)
    real = sandbox_module._which
    monkeypatch.setattr(sandbox_module, "_which", lambda name: None if name == "unshare" else real(name))
    write_jsonl(tmp_path / "data/tasks/humaneval/evaluation.jsonl", [humaneval_record(0)])
    params = {"evaluation": {"benchmarks": {"humaneval": {"limit": 1, "max_new_tokens": 4}},
                             "sandbox": {"timeout_s": 10, "isolation": "namespaces"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with monkeypatch.context() as m:
        m.setattr("pipeline.core.loading.load_model", lambda *a, **k: pytest.fail("model loaded before the sandbox check"))
        assert stage.main(["tiny", "humaneval", "--model", str(tiny_dir), "--no-progress"]) == 2
    assert "cannot run Python here" in capsys.readouterr().err
    params["evaluation"]["sandbox"]["isolation"] = "auto"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage.main(["tiny", "humaneval", "--model", str(tiny_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: code sandbox: isolation=process" in err and "isolation: namespaces" in err
    metrics = json.loads((tmp_path / "metrics/eval/tiny/humaneval.json").read_text())["humaneval"]["tiny"]
    details = json.loads((tmp_path / "artifacts/eval/tiny/humaneval/details.json").read_text())
    assert metrics["sandbox_isolation"] == details["sandbox"]["isolation"] == "process"
    assert details["sandbox"]["fallback_note"].startswith("fell back to process")
