"""The ablation table: every queued experiment against the baseline it varies.

Reads ``dvc exp show --csv`` (one row per experiment, flattened params and metrics), keeps
the experiments of the current commit, names each by the params it changed, and reports the
held-out metrics of the curve stage: untouched and transferred KL(source || model), the
change with its paired 95 % interval, and top-1 agreement. Writes CSV, JSON and Markdown
tables and a plot of the KL change per experiment.

    python -m pipeline.evaluation.ablations --out results/ablations [--task gsm8k --seed 0 --rev COMMIT ...]
"""

from __future__ import annotations

import argparse
import io
import subprocess
from pathlib import Path

import pandas as pd

from pipeline.core.artifacts import atomic_path, write_json
from pipeline.core.errors import PipelineError

# Parameters that name a configuration (not structure, paths or hashes).
PARAM_PREFIXES = ("frontier.", "fisher.", "pairing.", "attribution.", "alignment.", "seed")
METRICS = ("untouched.kl", "untouched.top1", "transferred.kl", "transferred.kl_diff",
           "transferred.kl_diff_low", "transferred.kl_diff_high", "transferred.top1",
           "transferred.top1_diff", "transferred.top1_diff_low", "transferred.top1_diff_high")


def exp_show_csv(revs: list[str] | None = None) -> pd.DataFrame:
    """The experiments derived from ``revs`` (default: HEAD) as a flat table."""
    cmd = ["dvc", "exp", "show", "--csv", "--hide-queued", "--hide-failed"]
    for rev in revs or []:
        cmd += ["--rev", rev]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise PipelineError(f"`dvc exp show` failed: {out.stderr.strip()[-300:]}", "run this in the project root")
    return pd.read_csv(io.StringIO(out.stdout))


def _metric_column(frame: pd.DataFrame, run: str, name: str) -> str:
    for col in (f"metrics/curve/{run}.json:{name}", name):
        if col in frame.columns:
            return col
    raise PipelineError(f"no curve metric {name!r} for {run} in the experiments table",
                        f"run the sweep with TARGETS=curve@... so every experiment has metrics/curve/{run}.json")


def changed_params(row: pd.Series, base: pd.Series, params: list[str]) -> str:
    """``key=value`` for each param that differs from the baseline (``baseline`` if none)."""
    diffs = [f"{p}={row[p]}" for p in params if str(row[p]) != str(base[p])]
    return ", ".join(diffs) or "baseline"


def table(frame: pd.DataFrame, run: str) -> pd.DataFrame:
    """One row per experiment of the workspace's commit, the baseline (the commit) first."""
    params = [c for c in frame.columns if c.startswith(PARAM_PREFIXES) and not c.startswith("chain.")]
    if "rev" in frame.columns:  # the workspace row holds uncommitted params, not a sweep's commit
        frame = frame[frame["rev"] != "workspace"]
    if "State" in frame.columns:  # a running (or orphaned) experiment shows its parent's metrics
        frame = frame[frame["State"].isna() | (frame["State"] == "Success")]
    commit = frame[frame["typ"].isin(["baseline"])] if "typ" in frame.columns else frame.iloc[[0]]
    if commit.empty:
        raise PipelineError("the experiments table has no baseline row", "commit the workspace before the sweep")
    base = commit.iloc[-1]
    differ = [c for c in params if commit[c].astype(str).nunique() > 1]
    if differ:
        raise PipelineError(f"the commits given differ in {differ}: their experiments are not one sweep",
                            "pass --rev only for commits with the same params")
    rows = frame[frame["typ"].isin(["baseline", "branch_commit", "branch_base"])] if "typ" in frame.columns else frame
    records = []
    for _, row in rows.iterrows():
        rec = {"experiment": row.get("Experiment") if pd.notna(row.get("Experiment")) else row.get("rev"),
               "rev": row.get("rev"), "changed": changed_params(row, base, params)}
        for m in METRICS:
            value = row[_metric_column(frame, run, m)]
            rec[m] = float(value) if pd.notna(value) and value != "-" else None
        records.append(rec)
    out = pd.DataFrame(records).dropna(subset=["transferred.kl"])
    out = pd.concat([out[out["changed"] == "baseline"].head(1), out[out["changed"] != "baseline"]])
    return out.sort_values("changed", key=lambda s: s != "baseline", kind="stable").reset_index(drop=True)


def markdown(df: pd.DataFrame) -> str:
    lines = ["| configuration (change from the baseline) | held-out KL untouched -> transferred | change [95 % CI] | "
             "top-1 agreement | change [95 % CI] |", "|---|---|---|---|---|"]
    for _, r in df.iterrows():
        sig = "" if r["transferred.kl_diff_low"] <= 0 <= r["transferred.kl_diff_high"] else " *"
        lines.append(f"| {r['changed']} | {r['untouched.kl']:.4f} -> {r['transferred.kl']:.4f} | "
                     f"{r['transferred.kl_diff']:+.4f} [{r['transferred.kl_diff_low']:+.4f}, "
                     f"{r['transferred.kl_diff_high']:+.4f}]{sig} | {r['untouched.top1']:.3f} -> "
                     f"{r['transferred.top1']:.3f} | {r['transferred.top1_diff']:+.3f} "
                     f"[{r['transferred.top1_diff_low']:+.3f}, {r['transferred.top1_diff_high']:+.3f}] |")
    lines.append("\n`*`: the paired interval excludes zero (lower KL is better; a positive change means the "
                 "transferred target is *less* like the source than the untouched one).")
    return "\n".join(lines) + "\n"


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(df) + 1.2))
    y = range(len(df))
    d = df["transferred.kl_diff"]
    ax.errorbar(d, y, xerr=[d - df["transferred.kl_diff_low"], df["transferred.kl_diff_high"] - d],
                fmt="o", capsize=3)
    ax.axvline(0, c="grey", ls="--", lw=1)
    ax.set_yticks(list(y), df["changed"])
    ax.invert_yaxis()
    ax.set_xlabel("held-out KL(source || model) change vs the untouched target\n(95 % paired CI; left of 0 = closer to the source)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/ablations"))
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rev", action="append", help="a commit the sweep was queued from (default: HEAD; repeat "
                    "for a sweep queued from several commits with the same params)")
    args = ap.parse_args()
    try:
        df = table(exp_show_csv(args.rev), f"{args.task}-s{args.seed}")
    except PipelineError as err:
        raise SystemExit(f"error: {err}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "ablations.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_json(args.out / "ablations.json", df.to_dict(orient="records"))
    with atomic_path(args.out / "ablations.md") as tmp:
        tmp.write_text(markdown(df))
    plot(df, args.out / "ablations.png")
    print(markdown(df))


if __name__ == "__main__":
    main()
