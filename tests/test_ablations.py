"""The ablation table built from `dvc exp show --csv` (pipeline/evaluation/ablations.py)."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from pipeline.evaluation.ablations import markdown, table
from pipeline.core.errors import PipelineError

HEADER = ("Experiment,rev,typ,State,frontier.lr,frontier.layer_weight,fisher.interface,untouched.kl,untouched.top1,"
          "transferred.kl,transferred.kl_diff,transferred.kl_diff_low,transferred.kl_diff_high,transferred.top1,"
          "transferred.top1_diff,transferred.top1_diff_low,transferred.top1_diff_high")


def frame(*rows: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO("\n".join([HEADER, *rows])))


def test_each_experiment_is_named_by_what_it_changed_baseline_first():
    """Two commits of the same sweep (same params) give one baseline row; each experiment is
    named by its differences from it. Rejects naming against the wrong row (every experiment
    would show lr or nothing), a baseline row per commit, the workspace's uncommitted params
    and a running experiment (it shows its parent's metrics)."""
    df = table(frame(
        "exp-a,aaa1,branch_commit,Success,5e-05,0.0,state,0.25,0.88,0.21,-0.04,-0.05,-0.02,0.89,0.01,0.0,0.02",
        ",c1,baseline,,5e-05,0.01,state,0.25,0.88,0.23,-0.02,-0.04,-0.01,0.887,0.01,0.0,0.02",
        "exp-b,bbb1,branch_commit,Success,5e-05,1.0,residual,0.25,0.88,0.40,0.15,0.10,0.20,0.80,-0.08,-0.1,-0.06",
        ",c2,baseline,,5e-05,0.01,state,0.25,0.88,0.23,-0.02,-0.04,-0.01,0.887,0.01,0.0,0.02",
        "exp-c,ccc1,branch_commit,Running,5e-05,0.5,state,0.25,0.88,0.23,-0.02,-0.04,-0.01,0.887,0.01,0.0,0.02",
        ",workspace,baseline,,1e-04,0.01,state,0.25,0.88,0.30,0.05,0.01,0.09,0.87,0.0,0.0,0.01",
    ), "gsm8k-s0")
    assert list(df["changed"]) == ["baseline", "frontier.layer_weight=0.0",
                                   "frontier.layer_weight=1.0, fisher.interface=residual"]
    md = markdown(df)
    assert "| frontier.layer_weight=0.0 | 0.2500 -> 0.2100 | -0.0400 [-0.0500, -0.0200] * |" in md
    assert "| frontier.layer_weight=1.0, fisher.interface=residual | 0.2500 -> 0.4000 | +0.1500 [+0.1000, +0.2000] * |" in md


def test_commits_with_other_params_are_not_one_sweep():
    with pytest.raises(PipelineError, match="frontier.lr"):
        table(frame(",c1,baseline,,5e-05,0.01,state,0.25,0.88,0.23,-0.02,-0.04,-0.01,0.887,0.01,0.0,0.02",
                    ",c2,baseline,,1e-04,0.01,state,0.25,0.88,0.23,-0.02,-0.04,-0.01,0.887,0.01,0.0,0.02"), "gsm8k-s0")
