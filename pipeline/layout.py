"""Where every artifact lives, relative to the project root (one place for stages and tests)."""

from __future__ import annotations

from pathlib import Path

MODELS = Path("models")
TASKS = Path("data/tasks")
ARTIFACTS = Path("artifacts")
METRICS = Path("metrics")
PLOTS = Path("plots")


def model_dir(role: str) -> Path:
    return MODELS / role


def task_dir(task: str) -> Path:
    return TASKS / task


def alignment_dir() -> Path:
    return ARTIFACTS / "alignment"


def source_dir(task: str) -> Path:
    """Extraction output: one sub-directory per split (transfer, validation)."""
    return ARTIFACTS / task / "source"


def layer_file(directory: Path, layer: int) -> Path:
    return Path(directory) / f"layer_{layer:02d}.safetensors"


def attribution_file(task: str) -> Path:
    return ARTIFACTS / task / "attribution.json"


def pairing_file(task: str) -> Path:
    return ARTIFACTS / task / "pairing.json"


def fisher_dir(task: str) -> Path:
    return ARTIFACTS / task / "fisher"


def frontier_dir(task: str, key: str) -> Path:
    """Stage ``key`` (e.g. ``mmlu-L03``) of the chain: block.safetensors, states.safetensors, log.json,
    and the DVCLive loss log in LIVE/."""
    return ARTIFACTS / task / "frontier" / key


LIVE = "live"  # DVCLive directory inside each frontier stage's output


def export_dir(task: str) -> Path:
    return ARTIFACTS / task / "model"


def baseline_dir(task: str, method: str, seed: int) -> Path:
    """One baseline run: a Hugging Face model directory plus cost.json and log.json."""
    return ARTIFACTS / task / "baselines" / f"{method}-s{seed}"


def quality_metrics(task: str) -> Path:
    return METRICS / "quality" / f"{task}.json"


def quality_plot(task: str) -> Path:
    return PLOTS / "quality" / f"{task}.json"


def analysis_metrics(task: str) -> Path:
    return METRICS / "analysis" / f"{task}.json"


def analysis_plot(kind: str, task: str, suffix: str = ".json") -> Path:
    """One directory per kind of figure (cka_before, pairing, ...), one file per task in it:
    dvc.yaml's top-level plots name directories, so they cover every task in params.yaml."""
    return PLOTS / "analysis" / kind / f"{task}{suffix}"
