"""Where every artifact lives, relative to the project root (one place for stages and tests)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.chain import stage_subdir

MODELS = Path("models")
TASKS = Path("data/tasks")
ARTIFACTS = Path("artifacts")
METRICS = Path("metrics")
PLOTS = Path("plots")
LIVE = Path("dvclive")  # per-step training logs (DVCLive's folder name), kept in git


def model_dir(role: str) -> Path:
    return MODELS / role


def task_dir(task: str) -> Path:
    return TASKS / task


def alignment_dir() -> Path:
    return ARTIFACTS / "alignment"


def vocab_file() -> Path:
    """The vocab stage's record that source and target share their token list."""
    return ARTIFACTS / "vocab.json"


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


def run_name(task: str, seed: int) -> str:
    """One SemAlign run: a task and a training seed, e.g. ``mmlu-s0``."""
    return f"{task}-s{seed}"


def frontier_dir(task: str, key: str) -> Path:
    """Stage ``key`` of the chain: block.safetensors, states.safetensors, log.json (its per-step
    loss log is :func:`frontier_live_dir`). A seed's blocks share a directory (``frontier/s0/mmlu-s0-L03``) that the
    seed's export depends on, so adding a seed leaves the other seeds' exports cached; the
    embedding (``frontier/mmlu-L00``) is shared."""
    return ARTIFACTS / task / "frontier" / stage_subdir(key)


def frontier_live_dir(task: str, key: str) -> Path:
    """Stage ``key``'s per-step loss log (DVCLive), beside the cached artifacts: under
    ``dvclive/TASK/frontier/`` in the chain's layout, so a seed's logs share a directory too."""
    return LIVE / task / "frontier" / stage_subdir(key)


def export_dir(task: str, seed: int) -> Path:
    return ARTIFACTS / task / f"model-s{seed}"


def baseline_dir(task: str, method: str, seed: int) -> Path:
    """One baseline run: a Hugging Face model directory plus cost.json and log.json."""
    return ARTIFACTS / task / "baselines" / f"{method}-s{seed}"


def baseline_live_dir(task: str, method: str, seed: int) -> Path:
    """One baseline run's per-step training log (DVCLive): loss, gradient norm, lr and its terms."""
    return LIVE / task / "baselines" / f"{method}-s{seed}"


def cost_file(stage: str) -> Path:
    """Cost record of a stage run named ``name@item`` (or ``name``): metrics/cost/name/item.json."""
    name, _, item = stage.partition("@")
    return METRICS / "cost" / name / f"{item or name}.json"


def quality_metrics(run: str) -> Path:
    return METRICS / "quality" / f"{run}.json"


def quality_plot(run: str) -> Path:
    return PLOTS / "quality" / f"{run}.json"


def heldout_metrics(model_key: str, task: str) -> Path:
    """Held-out KL and top-1 of one model on one task's validation split (means, counts)."""
    return METRICS / "heldout" / model_key / f"{task}.json"


def heldout_examples(model_key: str, task: str) -> Path:
    """The same per validation example, for paired comparisons in the report."""
    return ARTIFACTS / "heldout" / model_key / f"{task}.json"


def curve_metrics(run: str) -> Path:
    return METRICS / "curve" / f"{run}.json"


def curve_plot(run: str) -> Path:
    return PLOTS / "curve" / f"{run}.json"


def curve_examples(run: str, task: str) -> Path:
    """Per-example KL and top-1 hits at every point of the curve (for paired comparisons)."""
    return ARTIFACTS / task / f"curve-{run.removeprefix(task + '-')}.json"


def curve_png(run: str) -> Path:
    return PLOTS / "curve_png" / f"{run}.png"


def analysis_metrics(run: str) -> Path:
    return METRICS / "analysis" / f"{run}.json"


def analysis_plot(kind: str, run: str, suffix: str = ".json") -> Path:
    """One directory per kind of figure (cka_before, pairing, ...), one file per run in it:
    dvc.yaml's top-level plots name directories, so they cover every task and seed."""
    return PLOTS / "analysis" / kind / f"{run}{suffix}"
