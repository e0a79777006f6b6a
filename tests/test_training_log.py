"""Training logs: DVCLive in a committed repo, the same files without a commit, step by step."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from dvc_project import dvc_env

from pipeline.core.errors import PipelineError
from pipeline.core.training_log import LOSS, TrainingLog, read_losses, tsv_path

LOSSES = [0.75, 0.5, 0.4375]
SUMMARY = {"before": 0.8, "after": 0.4}


def git_dvc_repo(root: Path, env: dict, commit: bool) -> None:
    root.mkdir()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]) + ((["git", "commit", "-qm", "init"],) if commit else ()):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)


@pytest.fixture
def repos(tmp_path, monkeypatch) -> dict[str, Path]:
    env = dvc_env(tmp_path)
    for key in ("DVC_NO_ANALYTICS", "DVC_SITE_CACHE_DIR", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL",
                "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("DVC_ROOT", raising=False)  # as outside `dvc repro`
    git_dvc_repo(tmp_path / "committed", env, commit=True)
    git_dvc_repo(tmp_path / "empty", env, commit=False)
    return {"committed": tmp_path / "committed", "empty": tmp_path / "empty"}


def log_in(repo: Path, monkeypatch, losses=LOSSES) -> tuple[str, Path]:
    """A training stage's log: one step per loss, then the summary."""
    monkeypatch.chdir(repo)
    live = Path("out") / "live"
    log = TrainingLog(live)
    for loss in losses:
        log.step({LOSS: loss})
    log.close(SUMMARY)
    return log.writer, repo / live


def test_dvclive_writes_the_log_and_the_fallback_writes_the_same_files(repos, monkeypatch):
    writer, live = log_in(repos["committed"], monkeypatch)
    assert writer == "dvclive"
    assert read_losses(live) == LOSSES
    assert json.loads((live / "metrics.json").read_text()) == {"loss": LOSSES[-1], "step": 2, **SUMMARY}
    assert not (repos["committed"] / "dvc.yaml").exists()  # dvcyaml=False: no pipeline file written

    # `git init && dvc repro` before any commit: DVCLive raises "Empty git repo"
    writer, fallback = log_in(repos["empty"], monkeypatch)
    assert writer == "plain"
    for rel in ("metrics.json", tsv_path(Path(".")).as_posix()):
        assert (fallback / rel).read_text() == (live / rel).read_text(), rel


def test_zero_steps_and_a_missing_log(repos, monkeypatch):
    _, live = log_in(repos["empty"], monkeypatch, losses=[])
    assert read_losses(live) == []
    with pytest.raises(PipelineError, match="loss log .* is missing"):
        read_losses(repos["empty"] / "nowhere")


def test_each_step_is_on_disk_when_it_is_logged_and_a_declared_plot_exists_without_steps(repos, monkeypatch):
    """The log is written as training goes (what `dvc plots` and DVC's VS Code extension read
    while a stage trains), not at the end; a stage that trains no steps still writes the plot
    file dvc.yaml declares, with its header alone, in both writers."""
    for repo in ("committed", "empty"):
        monkeypatch.chdir(repos[repo])
        live = Path(f"steps-{repo}")
        log = TrainingLog(live)
        for i, loss in enumerate(LOSSES):
            log.step({LOSS: loss, "lr": 0.1})
            assert read_losses(live) == LOSSES[:i + 1], repo
            assert json.loads((live / "metrics.json").read_text())["step"] == i, repo
        log.close(SUMMARY)
        idle = TrainingLog(Path(f"idle-{repo}"), trains=False)
        idle.close(SUMMARY, declared=(LOSS,))
        assert idle.writer == "plain" and read_losses(Path(f"idle-{repo}")) == []
        assert tsv_path(Path(f"idle-{repo}")).read_text() == "step\tloss\n"
        assert json.loads((Path(f"idle-{repo}") / "metrics.json").read_text()) == SUMMARY
