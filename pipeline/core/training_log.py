"""Per-step loss logs of the frontier stages, in DVCLive's layout.

Each frontier stage logs into ``live/`` inside its own output directory, so the log is
part of the stage's cached output (run cache and `dvc pull` keep working) and DVCLive
never edits dvc.yaml (``dvcyaml=False``) or saves experiments of its own
(``save_dvc_exp=False``; `dvc exp run` saves them). Layout::

    live/metrics.json              last loss, last step, plus the summary given
    live/plots/metrics/loss.tsv    step<TAB>loss, one row per optimizer step

DVCLive refuses to start in a git repository without commits (it asks git for the
baseline revision). A `dvc repro` right after `git init` is legitimate, so then the same
two files are written here instead of failing a finished training run.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from pipeline.core.errors import PipelineError

METRIC = "loss"


def tsv_path(live_dir: Path) -> Path:
    return Path(live_dir) / "plots" / "metrics" / f"{METRIC}.tsv"


def _write_with_dvclive(live_dir: Path, losses: list[float], summary: Mapping[str, float]) -> None:
    from dvclive import Live  # imported here: importing DVC costs a second of start-up

    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False)
    for loss in losses:
        live.log_metric(METRIC, loss)
        live.next_step()
    live.summary.update(summary)
    live.end()


def _write_plain(live_dir: Path, losses: list[float], summary: Mapping[str, float]) -> None:
    Path(live_dir).mkdir(parents=True, exist_ok=True)
    if losses:  # like DVCLive: no steps, no TSV
        path = tsv_path(live_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("step\tloss\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(losses)))
    record = {METRIC: losses[-1], "step": len(losses) - 1} if losses else {}
    record.update(summary)
    (Path(live_dir) / "metrics.json").write_text(json.dumps(record, indent=4) + "\n")


def write_loss_log(live_dir: Path, losses: list[float], summary: Mapping[str, float]) -> str:
    """Log ``losses`` (one per step) and ``summary``; returns "dvclive" or "plain" (who wrote it).

    Callers pass a directory inside a not-yet-published output (the frontier stage's
    atomic temporary directory), so a crash leaves no half-written log behind.
    """
    from scmrepo.exceptions import SCMError

    try:
        _write_with_dvclive(Path(live_dir), losses, summary)
        return "dvclive"
    except SCMError:  # "Empty git repo": no commit yet to name a baseline
        _write_plain(Path(live_dir), losses, summary)
        return "plain"


class BackgroundLossLog:
    """``write_loss_log`` in a helper process started early, so DVCLive's import (about two
    seconds, most of it DVC) runs on the other core while the stage loads its model and trains.
    A frontier stage is short and there are L of them per task: this is minutes per run.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.core.losslog"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def write(self, live_dir: Path, losses: list[float], summary: Mapping[str, float]) -> str:
        request = {"live_dir": str(Path(live_dir).resolve()), "losses": list(losses), "summary": dict(summary)}
        out, err = self.proc.communicate(json.dumps(request), timeout=600)
        if self.proc.returncode != 0:
            raise PipelineError(f"the loss-log writer failed: {err.strip()[-800:]}",
                                "run `python -m pipeline.core.losslog < /dev/null` to check that DVCLive imports")
        return out.strip()

    def close(self) -> None:
        """End the helper if ``write`` was never reached (the stage failed first)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _serve() -> None:
    import dvclive  # noqa: F401  (the point of the helper: import while the parent works)

    text = sys.stdin.read()
    if not text.strip():
        return  # the parent ended without logging
    request = json.loads(text)
    print(write_loss_log(Path(request["live_dir"]), request["losses"], request["summary"]))


def read_losses(live_dir: Path) -> list[float]:
    """The per-step losses of one log, in step order."""
    path = tsv_path(live_dir)
    if not path.is_file() and (Path(live_dir) / "metrics.json").is_file():
        return []  # a stage trained for zero steps (frontier.steps: 0)
    if not path.is_file():
        raise PipelineError(f"loss log {path} is missing", "re-run the frontier stage that writes it (`dvc repro`)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and not {"step", METRIC} <= set(rows[0]):
        raise PipelineError(f"loss log {path} has columns {sorted(rows[0])}, expected step and {METRIC}",
                            "re-run the frontier stage that writes it (`dvc repro --force`)")
    return [float(r[METRIC]) for r in sorted(rows, key=lambda r: int(r["step"]))]


if __name__ == "__main__":
    _serve()
