"""The default-run timer: per-stage wall time from DVC's output, work time and peak from the stages'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE = """
import time
print("installing", flush=True)
time.sleep(0.3)
print("Running stage 'extract@mmlu':", flush=True)
time.sleep(0.4)
print("[extract@mmlu] done in 0.2 s, peak RSS 1234 MB", flush=True)
print("Running stage 'frontier@mmlu-s0-L01':", flush=True)
time.sleep(0.2)
print("[frontier@mmlu-s0-L01] done in 0.1 s, peak RSS 321 MB", flush=True)
"""


def test_timer_reports_each_stage_from_one_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.timed_run", "--log", str(tmp_path / "run.log"),
                          "--json", str(tmp_path / "run.json"), "--", sys.executable, "-c", FAKE],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "run.json").read_text())
    stages = {r["stage"]: r for r in record["stages"]}
    assert list(stages) == ["extract@mmlu", "frontier@mmlu-s0-L01"]
    assert [k["kind"] for k in record["kinds"]] == ["extract", "frontier"]
    extract = record["kinds"][0]
    assert extract["work_s"] == 0.2 and extract["overhead_s"] == round(extract["wall_s"] - 0.2, 1) > 0
    assert 0 < extract["overhead_share"] < 1 and "overhead" in out.stdout
    assert stages["extract@mmlu"]["peak_rss_mb"] == 1234 and stages["extract@mmlu"]["work_s"] == 0.2
    assert 0.35 <= stages["extract@mmlu"]["wall_s"] < 2.0  # from its Running line to the next one
    assert record["setup_s"] >= 0.3 and record["total_s"] >= 0.9
    assert "largest process peak RSS" in out.stdout
    assert (tmp_path / "run.log").read_text().count("Running stage") == 2


NO_TORCH = """
import json, sys
from pathlib import Path
import stages.data, stages.pair
stages.data.run("toy", Path("params.yaml"), Path("tasks"))
Path("models/source").mkdir(parents=True); Path("models/target").mkdir(parents=True)
Path("models/source/config.json").write_text(json.dumps({"num_hidden_layers": 4}))
Path("models/target/config.json").write_text(json.dumps({"num_hidden_layers": 2}))
Path("artifacts/toy").mkdir(parents=True)
Path("artifacts/toy/attribution.json").write_text(json.dumps({"scores": [1.0, 4.0, 2.0, 3.0]}))
sys.argv = ["stages.pair", "toy"]
stages.pair.main()
print("torch loaded:", "torch" in sys.modules)
"""


def test_stages_without_a_model_do_not_pay_for_torch(tmp_path):
    """Part of every stage's overhead is its imports; torch's is seconds. The stages that run no
    model (data, pair) import it nowhere: pipeline.core.artifacts and pipeline.core.data import torch
    inside the functions that handle tensors. Rejects a module-level `import torch` creeping
    back into a module these stages import."""
    params = {"seed": 0, "tasks": ["toy"], "tasks_config": {"toy": {"attribution": 2, "transfer": 3,
                                                                     "validation": 2, "evaluation": 2}},
              "pairing": {"strategy": "floor"}, "attribution": {"n_critical": 1}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    out = subprocess.run([sys.executable, "-c", NO_TORCH], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "tasks/toy/transfer.jsonl").is_file() and (tmp_path / "artifacts/toy/pairing.json").is_file()
    assert "torch loaded: False" in out.stdout
