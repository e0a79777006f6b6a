"""The results table (the paper's Table 1 layout) from the evaluate stage's metrics files.

Rows are models, columns the four benchmarks' headline numbers (percent), their mean, and
the mean absolute gap to the source model, the paper's headline quantity ("SemAlign ends
up closest to the source"). Each benchmark cell keeps its n and 95% interval. The code
benchmarks' sandbox isolation (``sandbox_isolation`` in their metrics) is a column of the
CSV and a note under the Markdown table, flagged where it was not kernel isolation.

Seeds: model keys ``<name>-s<k>`` (e.g. ``semalign-s1``, ``semalign-s2``) are runs of one
method. Their row shows mean ± sample std over runs; the mean and the gap are computed per
run first and then averaged, since a gap of averaged scores would hide run-to-run swings.

Cost: each method stage leaves a record in ``metrics/cost/`` (see ``pipeline.core.runner``). A
method's cost for one seed is the wall time summed over every stage its runs consist of, on
all its tasks, and the highest peak memory among them; the table shows mean ± std over seeds.

Budget (``pipeline.evaluation.budget``): beside the cost, what one run of the method trains on, summed
over its tasks: examples seen and optimizer steps; the budget section lists them per task
with the passes over the transfer split. The paired comparisons with the untouched target
(held-out agreement, benchmarks) are ``pipeline.evaluation.comparisons``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from pipeline.evaluation.benchmarks import BENCHMARKS, PRIMARY
from pipeline.core.errors import PipelineError
from pipeline.evaluation.stats import mean_std

_SEED = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")


def seed_group(model_key: str) -> str:
    """``semalign-s2`` -> ``semalign``; keys without a seed suffix are their own group."""
    m = _SEED.match(model_key)
    return m.group("group") if m else model_key


def _records(directory: str | Path, writer: str) -> Iterator[dict]:
    """The JSON records ``<dir>/*/*.json`` in path order; ``writer`` names who re-makes a bad one."""
    for path in sorted(Path(directory).glob("*/*.json")):
        try:
            yield json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{path} is not valid JSON ({exc})", f"re-run {writer}") from exc


def collect(metrics_dir: str | Path) -> pd.DataFrame:
    """One row per (model run, benchmark): score, interval, n, from ``<dir>/<model>/<bench>.json``."""
    rows = []
    for record in _records(metrics_dir, "its evaluate stage"):
        for bench, per_model in record.items():
            if bench not in PRIMARY:
                continue
            for model, m in per_model.items():
                key = PRIMARY[bench]
                rows.append({"model": model, "benchmark": bench, "score": m[key],
                             "ci95_low": m[f"{key}_ci95_low"], "ci95_high": m[f"{key}_ci95_high"], "n": m["n"],
                             "isolation": m.get("sandbox_isolation", "")})
    if not rows:
        raise PipelineError(f"no evaluation metrics under {metrics_dir}",
                            "run the evaluate stages first (`dvc repro`)")
    return pd.DataFrame(rows)


# Methods that read the cached source extraction; its stages count towards their cost.
SOURCE_READERS = frozenset({"semalign", "kd", "hidden_kd"})
COST_FIELDS = ("stage", "method", "task", "seed", "wall_s", "peak_rss_mb")


def collect_costs(cost_dir: str | Path) -> pd.DataFrame:
    """One row per method stage run, from ``<dir>/<stage>/<item>.json``; empty if there are none."""
    rows = [{k: record.get(k) for k in COST_FIELDS} for record in _records(cost_dir, "the stage that wrote it")]
    return pd.DataFrame(rows, columns=list(COST_FIELDS))


def method_costs(costs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, seed): total wall seconds and peak MB over the stages that run consists of.

    Stages without a seed (extraction, attribution, Fisher statistics, ...) serve every seed
    and count towards each; stages without a task (align) towards every task.
    """
    out = []
    costs = costs.astype({"seed": "object", "task": "object"})
    for method in sorted(set(costs["method"]) - {"extract"}):
        own = costs[costs["method"] == method]
        for seed in sorted({int(s) for s in own["seed"].dropna()}):
            tasks = set(own.loc[own["seed"] == seed, "task"])
            shared = own["seed"].isna() & (own["task"].isin(tasks) | own["task"].isna())
            parts = [own[(own["seed"] == seed) | shared]]
            if method in SOURCE_READERS:
                parts.append(costs[(costs["method"] == "extract") & costs["task"].isin(tasks)])
            rows = pd.concat(parts)
            out.append({"method": method, "seed": seed, "wall_s": float(rows["wall_s"].sum()),
                        "peak_rss_mb": float(rows["peak_rss_mb"].max()), "stages": len(rows)})
    return pd.DataFrame(out, columns=["method", "seed", "wall_s", "peak_rss_mb", "stages"])


def _seed_of(model_key: str) -> int | None:
    m = _SEED.match(model_key)
    return int(m.group("seed")) if m else None


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def per_run(long: pd.DataFrame, source: str) -> pd.DataFrame:
    """Wide per model run: one score column per benchmark, plus ``mean`` and ``gap``."""
    wide = long.pivot_table(index="model", columns="benchmark", values="score", aggfunc="first")
    benches = [b for b in BENCHMARKS if b in wide.columns]
    wide = wide.reindex(columns=benches)
    wide["mean"] = [_nanmean(list(row)) for row in wide[benches].itertuples(index=False)]
    if source in wide.index:
        ref = wide.loc[source, benches]
        wide["gap"] = [_nanmean([abs(v - r) for v, r in zip(row, ref)])
                       for row in wide[benches].itertuples(index=False)]
    else:
        wide["gap"] = math.nan
    return wide


def _order(groups: Sequence[str], source: str, preferred: Sequence[str]) -> list[str]:
    first = [source] if source in groups else []
    pref = [g for g in dict.fromkeys(seed_group(p) for p in preferred) if g in groups and g != source]
    return first + pref + sorted(g for g in groups if g not in first and g not in pref)


def table(long: pd.DataFrame, source: str, preferred: Sequence[str] = (),
          costs: pd.DataFrame | None = None, budgets: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method (seeds grouped): per benchmark mean, std, n, CI; mean; gap; with
    ``costs`` (:func:`collect_costs`), wall minutes and peak GB per run; with ``budgets``
    (:func:`budget_frame`), examples seen and optimizer steps per run."""
    per_method = method_costs(costs) if costs is not None and len(costs) else None
    runs = per_run(long, source)
    benches = [b for b in BENCHMARKS if b in runs.columns]
    info = long.set_index(["model", "benchmark"])
    groups: dict[str, list[str]] = {}
    for model in runs.index:
        groups.setdefault(seed_group(model), []).append(model)
    out = []
    for group in _order(list(groups), source, preferred):
        members = sorted(groups[group])
        row: dict = {"model": group, "runs": len(members)}
        for b in benches:
            vals = [runs.loc[m, b] for m in members if not math.isnan(runs.loc[m, b])]
            if not vals:
                row.update({b: math.nan, f"{b}_std": math.nan, f"{b}_n": math.nan,
                            f"{b}_ci95_low": math.nan, f"{b}_ci95_high": math.nan})
                continue
            mean, std = mean_std(vals)
            ns = [int(info.loc[(m, b), "n"]) for m in members if (m, b) in info.index]
            single = len(vals) == 1
            row.update({b: mean, f"{b}_std": std if not single else math.nan, f"{b}_n": min(ns),
                        f"{b}_ci95_low": info.loc[(members[0], b), "ci95_low"] if single else math.nan,
                        f"{b}_ci95_high": info.loc[(members[0], b), "ci95_high"] if single else math.nan})
        for col in ("mean", "gap"):
            vals = [runs.loc[m, col] for m in members if not math.isnan(runs.loc[m, col])]
            mean, std = mean_std(vals) if vals else (math.nan, math.nan)
            row.update({col: mean, f"{col}_std": std if len(vals) > 1 else math.nan})
        row.update(_cost_columns(per_method, group, members))
        modes = long.loc[long["model"].isin(members), "isolation"] if "isolation" in long else []
        row["sandbox"] = ", ".join(sorted({m for m in modes if m}))
        row.update(_budget_columns(budgets, group))
        out.append(row)
    return pd.DataFrame(out)


def sandbox_note(tab: pd.DataFrame) -> list[str]:
    """The code sandbox's isolation under the table; judging without kernel isolation is flagged."""
    modes: dict[str, list[str]] = {}
    for _, row in tab.iterrows():
        for mode in filter(None, str(row.get("sandbox") or "").split(", ")):
            modes.setdefault(mode, []).append(row["model"])
    if not modes:
        return []
    lines = ["code sandbox isolation (HumanEval, MBPP): " + "; ".join(
        f"`{mode}` for {', '.join(models)}" for mode, models in sorted(modes.items())) + "."]
    if "process" in modes:
        lines.append(f"**Warning**: {', '.join(modes['process'])} had generated code judged without kernel "
                     "isolation (`process`: resource limits and the in-process guard only).")
    return lines


def budget_frame(budgets) -> pd.DataFrame:
    """``pipeline.evaluation.budget.Budget`` records as a frame (one row per method and task)."""
    return pd.DataFrame([b.row() for b in budgets],
                        columns=["method", "task", "seeds", "examples_used", "passes", "examples_seen",
                                 "optimizer_steps", "batch_size", "extra", "capped"])


def _budget_columns(budgets: pd.DataFrame | None, group: str) -> dict:
    """One run's budget summed over the method's tasks (every seed has the same)."""
    own = budgets[budgets["method"] == group] if budgets is not None else None
    if own is None or own.empty:
        return {"examples_seen": math.nan, "optimizer_steps": math.nan}
    return {"examples_seen": float(own["examples_seen"].sum()), "optimizer_steps": float(own["optimizer_steps"].sum())}


def _cost_columns(per_method: pd.DataFrame | None, group: str, members: list[str]) -> dict:
    cols = {"wall_min": math.nan, "wall_min_std": math.nan, "peak_gb": math.nan, "peak_gb_std": math.nan}
    if per_method is None:
        return cols
    seeds = {_seed_of(m) for m in members}
    runs = per_method[(per_method["method"] == group) & per_method["seed"].isin(seeds)]
    for col, src, scale in (("wall_min", "wall_s", 60.0), ("peak_gb", "peak_rss_mb", 1024.0)):
        vals = [float(v) / scale for v in runs[src]]
        if vals:
            mean, std = mean_std(vals)
            cols.update({col: mean, f"{col}_std": std if len(vals) > 1 else math.nan})
    return cols


def _cell(row: pd.Series, b: str) -> str:
    v = row[b]
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if row["runs"] > 1:
        return f"{v:.2f} ± {row[f'{b}_std']:.2f} (n={int(row[f'{b}_n'])}×{int(row['runs'])})"
    return f"{v:.2f} [{row[f'{b}_ci95_low']:.1f}, {row[f'{b}_ci95_high']:.1f}] (n={int(row[f'{b}_n'])})"


def _plain(row: pd.Series, col: str) -> str:
    v = row[col]
    if isinstance(v, float) and math.isnan(v):
        return "–"
    std = row[f"{col}_std"]
    return f"{v:.2f} ± {std:.2f}" if not (isinstance(std, float) and math.isnan(std)) else f"{v:.2f}"


def _count(row: pd.Series, col: str) -> str:
    v = row.get(col, math.nan)
    return "–" if isinstance(v, float) and math.isnan(v) else f"{int(v):,}"


def markdown(tab: pd.DataFrame, source: str) -> str:
    """A Markdown table; cells "score [CI low, high] (n=…)" or "mean ± std (n=…×runs)"."""
    benches = [b for b in BENCHMARKS if b in tab.columns]
    header = ["model"] + [f"{b} ({PRIMARY[b]})" for b in benches] + ["mean", f"gap to {source}",
                                                                      "cost: wall (min)", "peak RSS (GB)",
                                                                      "budget: examples seen", "optimizer steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in tab.iterrows():
        label = row["model"] + (f" ({int(row['runs'])} seeds)" if row["runs"] > 1 else "")
        cells = [label] + [_cell(row, b) for b in benches] + [_plain(row, "mean"), _plain(row, "gap"),
                                                              _plain(row, "wall_min"), _plain(row, "peak_gb"),
                                                              _count(row, "examples_seen"),
                                                              _count(row, "optimizer_steps")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Scores in percent. Single runs: [Wilson 95% interval] and the number of questions n. "
        "Several seeds (model keys `<name>-s<k>`): mean ± sample std over runs, n questions per run.",
        f"mean: unweighted mean of the benchmark columns; gap: mean absolute difference to `{source}` "
        "over the benchmarks both have (per run, then averaged).",
        "cost: wall time of one run summed over the method's stages on all its tasks (Python start-up and "
        "evaluation excluded), and the highest peak resident memory among those stages; mean ± std over seeds. "
        "SemAlign counts align, extract, attribute, pair, fisher, embed, every frontier block and export; "
        "KD and hidden-state KD count the source extraction they read; SFT, SEEKING and LaTen their own stage "
        "(SEEKING and LaTen load the source themselves). – = no cost record (reference models).",
        "budget: one run's training examples seen (summed batch sizes) and optimizer steps, summed over the "
        "method's tasks, from params.yaml (pipeline/evaluation/budget.py); SemAlign's are summed over its trained blocks, "
        "each of which trains alone. Per task, with passes over the transfer split: the budget section.",
    ]
    if tab[benches].isna().any().any():
        notes.append("– = not evaluated; means and gaps then use the benchmarks available.")
    notes += sandbox_note(tab)
    return "\n".join(lines + notes) + "\n"


def summary_metrics(tab: pd.DataFrame) -> dict:
    """``{"results": {model: {"mean", "gap_to_source", "wall_min", "peak_gb", "examples_seen",
    "optimizer_steps", "runs"}}}`` for ``dvc exp show``.

    The per-benchmark numbers are already metrics of the evaluate stages; this adds the
    derived columns so experiments can be compared on the paper's headline quantity and cost.
    """
    out = {}
    for _, row in tab.iterrows():
        entry = {}
        for col, name in (("mean", "mean"), ("gap", "gap_to_source"), ("wall_min", "wall_min"),
                          ("peak_gb", "peak_gb"), ("examples_seen", "examples_seen"),
                          ("optimizer_steps", "optimizer_steps")):
            if not (isinstance(row[col], float) and math.isnan(row[col])):
                entry[name] = round(float(row[col]), 4)
                std = row.get(f"{col}_std", math.nan)  # budgets have none: every seed gets the same
                if not (isinstance(std, float) and math.isnan(std)):
                    entry[f"{name}_std"] = round(float(std), 4)
        entry["runs"] = int(row["runs"])
        out[row["model"]] = entry
    return {"results": out}


def budget_markdown(budgets: pd.DataFrame) -> str:
    """Per task and method: training examples, passes over them, examples seen, optimizer steps."""
    if budgets is None or budgets.empty:
        return ""
    lines = ["", "### Budgets (params.yaml, pipeline/evaluation/budget.py)", "",
             "| task | method | seeds | training examples | passes | examples seen | optimizer steps | batch | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, b in budgets.iterrows():
        notes = ", ".join([f"{k.replace('_', ' ')} {v}" for k, v in b["extra"].items()]
                          + [f"capped: {c}" for c in b["capped"]])
        seeds = ", ".join(str(s) for s in b["seeds"]) or "–"
        lines.append(f"| {b['task']} | {b['method']} | {seeds} | {b['examples_used']} | {b['passes']:.2f} | "
                     f"{b['examples_seen']:,} | {b['optimizer_steps']:,} | {b['batch_size']} | {notes} |")
    lines += ["", "seeds: the training seeds the method runs with (one run each; the budget is one run's). "
              "passes: examples seen per training example; SemAlign's per trained block (each block trains "
              "alone on the whole transfer split), so its examples seen and steps are summed over the blocks. "
              "Every baseline gets at least SemAlign's passes (tests/test_budget.py); SEEKING's seeds and "
              "LaTen's extract/align sizes are their papers', capped by the splits that exist."]
    return "\n".join(lines) + "\n"


def order_rows(frame: pd.DataFrame, source: str, preferred: Sequence[str], by: str) -> pd.DataFrame:
    """Rows grouped by ``by`` (task or benchmark), models in the main table's order, seeds ascending."""
    if frame.empty:
        return frame
    groups = _order(sorted({seed_group(m) for m in frame["model"]}), source, preferred)
    rank = {g: i for i, g in enumerate(["target"] + [g for g in groups if g != "target"])}
    keys = frame["model"].map(lambda m: (rank[seed_group(m)], _seed_of(m) or 0))
    return frame.assign(_key=keys).sort_values([by, "_key"], kind="stable").drop(columns="_key").reset_index(drop=True)


def plot_rows(tab: pd.DataFrame) -> pd.DataFrame:
    """Long format for ``dvc plots``: model, benchmark, score (+ a label and error bounds)."""
    rows = []
    for _, row in tab.iterrows():
        for b in [b for b in BENCHMARKS if b in tab.columns]:
            if isinstance(row[b], float) and math.isnan(row[b]):
                continue
            single = row["runs"] == 1
            err_low = row[f"{b}_ci95_low"] if single else row[b] - row[f"{b}_std"]
            err_high = row[f"{b}_ci95_high"] if single else row[b] + row[f"{b}_std"]
            rows.append({"label": f"{b} · {row['model']}", "model": row["model"], "benchmark": b,
                         "score": round(float(row[b]), 2), "low": round(float(err_low), 2),
                         "high": round(float(err_high), 2)})
    return pd.DataFrame(rows)


def bar_chart(plot: pd.DataFrame, path: str | Path) -> None:
    """Grouped bars per benchmark, one colour per model, whiskers = CI (or ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(dict.fromkeys(plot["benchmark"]))
    models = list(dict.fromkeys(plot["model"]))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(2.8 + 1.4 * len(benches), 3.6))
    for i, model in enumerate(models):
        sub = plot[plot["model"] == model].set_index("benchmark").reindex(benches)
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(benches))]
        err = [(sub["score"] - sub["low"]).clip(lower=0).fillna(0), (sub["high"] - sub["score"]).clip(lower=0).fillna(0)]
        ax.bar(xs, sub["score"].fillna(0), width, yerr=err, capsize=2, label=model)
    ax.set_xticks(range(len(benches)), benches)
    ax.set_ylabel("score (%)")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")  # explicit: atomic writes use a .tmp name
    plt.close(fig)
