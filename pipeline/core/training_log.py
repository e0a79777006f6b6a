"""Per-step training logs through DVCLive: the frontier stages' loss, the baselines' losses.

A training stage opens its log before its first step and logs every optimizer step as it
happens, so `dvc plots show` (and DVC's VS Code extension, while `dvc exp run` trains) read
the curve from the files DVCLive keeps up to date. Each log is a directory of its own under
``dvclive/`` (layout.live_dir), declared in dvc.yaml as the stage's plots with
``cache: false``: kept in git, so a fresh clone shows it without a pull. DVCLive never edits
dvc.yaml (``dvcyaml=False``) or saves experiments of its own (``save_dvc_exp=False``;
`dvc exp run` saves them). Layout::

    metrics.json               last value of each metric, last step, plus the summary given
    plots/metrics/NAME.tsv     step<TAB>NAME, one row per optimizer step and metric

DVCLive refuses to start in a git repository without commits (it asks git for the
baseline revision). A `dvc repro` right after `git init` is legitimate, so then the same
files are written here, step by step, instead of failing a training run. A stage that
trains no steps (a frontier block without an objective) writes them here too: importing
DVCLive costs it about two seconds for nothing to log.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.errors import PipelineError

LOSS = "loss"


def tsv_path(live_dir: Path, metric: str = LOSS) -> Path:
    return Path(live_dir) / "plots" / "metrics" / f"{metric}.tsv"


class _PlainWriter:
    """The files DVCLive writes, byte for byte, without DVCLive (its summary logic included)."""

    def __init__(self, live_dir: Path) -> None:
        self.dir = Path(live_dir)
        shutil.rmtree(self.dir / "plots", ignore_errors=True)  # a fresh log, as DVCLive starts one
        (self.dir / "metrics.json").unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.step = 0
        self.summary: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        path = tsv_path(self.dir, name)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"step\t{name}\n")
        with path.open("a") as f:
            f.write(f"{self.step}\t{value}\n")
        self.summary[name] = value

    def next_step(self) -> None:
        self.summary["step"] = self.step
        self._write_summary()
        self.step += 1

    def end(self) -> None:
        self._write_summary()

    def _write_summary(self) -> None:
        (self.dir / "metrics.json").write_text(json.dumps(self.summary, indent=4) + "\n")


def _open_live(live_dir: Path):
    from dvclive import Live  # here, not at module level: DVC's import costs seconds of start-up
    from scmrepo.exceptions import SCMError

    try:
        return Live(str(live_dir), dvcyaml=False, save_dvc_exp=False), "dvclive"
    except SCMError:  # "Empty git repo": no commit yet to name a baseline
        return _PlainWriter(live_dir), "plain"


class TrainingLog:
    """One stage's per-step log; ``writer`` says who writes it ("dvclive" or "plain")."""

    def __init__(self, live_dir: Path, trains: bool = True) -> None:
        self.dir = Path(live_dir)
        if trains:
            self._out, self.writer = _open_live(self.dir)
        else:
            self._out, self.writer = _PlainWriter(self.dir), "plain"
        self.steps = 0

    def step(self, values: Mapping[str, float]) -> None:
        """Log one optimizer step's values; the files on disk include it when this returns."""
        for name, value in values.items():
            self._out.log_metric(name, float(value))
        self._out.next_step()
        self.steps += 1

    def close(self, summary: Mapping[str, float], declared: Sequence[str] = ()) -> None:
        """Add ``summary`` to metrics.json and end the log. ``declared``: metrics whose plot file
        dvc.yaml declares as an output; a stage that logged no step writes each with its header
        alone, so the output exists (DVCLive writes no file for a metric never logged)."""
        self._out.summary.update(summary)
        self._out.end()
        if self.steps == 0:
            for name in declared:
                path = tsv_path(self.dir, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"step\t{name}\n")


def read_losses(live_dir: Path) -> list[float]:
    """The per-step losses of one log, in step order ([] for a stage that trained no steps)."""
    path = tsv_path(live_dir)
    if not path.is_file() and (Path(live_dir) / "metrics.json").is_file():
        return []  # a log written before stages declared their loss plot: no steps, no TSV
    if not path.is_file():
        raise PipelineError(f"loss log {path} is missing", "re-run the training stage that writes it (`dvc repro`)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and not {"step", LOSS} <= set(rows[0]):
        raise PipelineError(f"loss log {path} has columns {sorted(rows[0])}, expected step and {LOSS}",
                            "re-run the training stage that writes it (`dvc repro --force`)")
    return [float(r[LOSS]) for r in sorted(rows, key=lambda r: int(r["step"]))]
