"""Every model against the untouched target on the same items: the report's paired sections.

- Held-out agreement with the source (the heldout stages' per-example records): per task, each
  model's mean KL(source || model) and top-1 agreement on the validation split, and its
  difference to the untouched target with a 95 % paired-bootstrap interval over examples
  (``pipeline.evaluation.heldout.difference``).
- Benchmarks (the evaluate stages' samples.jsonl): per benchmark, each model's per-item
  verdicts against the target's on the same questions: accuracy difference, Newcombe's
  paired 95 % interval and the exact McNemar test (``pipeline.evaluation.paired``).
- Head to head: each SemAlign run against each baseline run with the same two measures, on
  the same examples and items (SemAlign minus the baseline).

Seeds: each seed's run is compared with the target on its own. A seed is a different model;
pooling seeds per item would give fractional outcomes that McNemar's test does not cover. The
rows of one method show how consistent the seeds are; no correction for the number of
comparisons is made, so read one "significant" among many rows with care.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from pipeline.evaluation.benchmarks import primary_verdict
from pipeline.core.errors import PipelineError
from pipeline.evaluation.heldout import Agreement, difference
from pipeline.evaluation.paired import ALPHA, compare, detectable_difference

REFERENCE = "target"
N_BOOT = 10000  # bootstrap resamples per held-out interval (seeded: the report is reproducible)
POWER = 0.8


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc})", "re-run the heldout stage that wrote it") from exc


def heldout_records(directory: str | Path) -> dict[tuple[str, str], tuple[list[str], Agreement]]:
    """(model key, task) -> (example ids, per-example agreement), from ``<dir>/<model>/<task>.json``."""
    out = {}
    for path in sorted(Path(directory).glob("*/*.json")):
        record = _read_json(path)
        out[(path.parent.name, path.stem)] = (list(record["ids"]), Agreement.from_json(record))
    return out


def _heldout_pair(records: dict, model: str, other: str, task: str, n_boot: int) -> dict:
    """``model`` minus ``other`` on the same validation examples of ``task`` (paired bootstrap)."""
    (ids, mine), (their_ids, theirs) = records[(model, task)], records[(other, task)]
    if ids != their_ids:
        raise PipelineError(f"{model} and {other} were scored on different {task} validation examples",
                            f"re-run the heldout stages of {task} (`dvc repro`)")
    return difference(theirs, mine, n_boot=n_boot)


def heldout_table(directory: str | Path, reference: str = REFERENCE, n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per (task, model): mean KL and top-1, and for every model but the reference the
    difference to it with its paired interval. Empty when no held-out records exist."""
    records = heldout_records(directory)
    rows = []
    for (model, task), (ids, agreement) in sorted(records.items(), key=lambda kv: (kv[0][1], kv[0][0] != reference)):
        row = {"task": task, "model": model, "kl": agreement.mean_kl, "top1": agreement.mean_top1,
               "examples": int((agreement.positions > 0).sum()), "positions": int(agreement.positions.sum())}
        if model != reference:
            if (reference, task) not in records:
                raise PipelineError(f"held-out records of {model} on {task} have no untouched-target record to pair "
                                    "with", f"run the heldout-target stage for {task} (`dvc repro`)")
            row.update({k: v for k, v in _heldout_pair(records, model, reference, task, n_boot).items()
                        if k not in ("examples", "positions")})
        rows.append(row)
    return pd.DataFrame(rows)


def _samples(path: Path) -> list[dict]:
    """The evaluate stage's per-item records (not task records: no messages to validate)."""
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON lines ({exc})",
                            "re-run the evaluate stage that wrote it") from exc


def benchmark_verdicts(directory: str | Path) -> dict[tuple[str, str], dict[str, bool]]:
    """(model key, benchmark) -> {item id: right?}, from ``<dir>/<model>/<benchmark>/samples.jsonl``."""
    out = {}
    for path in sorted(Path(directory).glob("*/*/samples.jsonl")):
        model, bench = path.parent.parent.name, path.parent.name
        out[(model, bench)] = {str(s["id"]): primary_verdict(bench, s) for s in _samples(path)}
    return out


def _benchmark_pair(verdicts: dict, model: str, other: str, bench: str) -> dict:
    """``model`` against ``other`` on the same items of ``bench`` (``model_only``: items only
    ``model`` got right): accuracy difference, paired interval, exact McNemar test."""
    mine, theirs = verdicts[(model, bench)], verdicts[(other, bench)]
    if set(mine) != set(theirs):
        raise PipelineError(f"{model} and {other} were evaluated on different {bench} items "
                            f"({len(mine)} vs {len(theirs)})",
                            f"re-run both evaluate stages for {bench} with the same evaluation settings")
    order = sorted(theirs)
    return compare([theirs[i] for i in order], [mine[i] for i in order]).record()


def paired_benchmarks(directory: str | Path, reference: str = REFERENCE) -> pd.DataFrame:
    """One row per (benchmark, model other than the reference): the paired comparison with the
    reference on the same items. Empty when the reference has no samples."""
    verdicts = benchmark_verdicts(directory)
    rows = []
    for (model, bench), items in sorted(verdicts.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if model == reference or (reference, bench) not in verdicts:
            continue
        rows.append({"benchmark": bench, "model": model, **_benchmark_pair(verdicts, model, reference, bench)})
    return pd.DataFrame(rows)


def detectable(paired: pd.DataFrame, power: float = POWER) -> pd.DataFrame:
    """Per benchmark: n, the discordance observed (mean over the models compared) and the
    smallest accuracy difference the exact McNemar test detects with ``power`` at that n and
    discordance (NaN when none does)."""
    rows = []
    for bench, group in paired.groupby("benchmark", sort=False):
        n = int(group["n"].iloc[0])
        psi = float(((group["model_only"] + group["target_only"]) / group["n"]).mean())
        mde = detectable_difference(n, psi, power) if psi > 0 else None
        rows.append({"benchmark": bench, "n": n, "discordance": psi, "detectable": math.nan if mde is None else mde})
    return pd.DataFrame(rows)


def _pp(v: float) -> str:
    return f"{100 * v:+.1f}"


def _pairings(keys, method: str, untouched: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(group, run, baseline) from (model, group) keys: each run of ``method`` (``semalign-s0``...)
    against every other model of the same group but the untouched ones."""
    out = []
    for group in sorted({g for _, g in keys}):
        models = [m for m, g in keys if g == group]
        runs = sorted(m for m in models if m == method or m.startswith(f"{method}-s"))
        others = sorted(m for m in models if m not in runs and m not in untouched)
        out += [(group, run, other) for run in runs for other in others]
    return out


def head_to_head(heldout_dir: str | Path, samples_dir: str | Path, method: str = "semalign",
                 untouched: tuple[str, ...] = (REFERENCE, "source"), n_boot: int = N_BOOT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each run of ``method`` against each baseline run on the same items, ``method`` minus the
    baseline: held-out KL and top-1 with paired-bootstrap intervals (one row per task), and
    per benchmark the paired accuracy test (``model_only``: items only ``method`` got right)."""
    records = heldout_records(heldout_dir)
    held = [{"task": task, "run": run, "baseline": other, **_heldout_pair(records, run, other, task, n_boot)}
            for task, run, other in _pairings(records, method, untouched)]
    verdicts = benchmark_verdicts(samples_dir)
    bench = [{"benchmark": name, "run": run, "baseline": other, **_benchmark_pair(verdicts, run, other, name)}
             for name, run, other in _pairings(verdicts, method, untouched)]
    return pd.DataFrame(held), pd.DataFrame(bench)


def head_to_head_markdown(held: pd.DataFrame, bench: pd.DataFrame) -> str:
    if held.empty and bench.empty:
        return ""
    lines = ["", "### SemAlign against each baseline on the same items", ""]
    if not held.empty:
        lines += ["| task | SemAlign run | baseline | Δ KL [95% CI] | Δ top-1 [95% CI] |", "|---|---|---|---|---|"]
        for _, r in held.iterrows():
            lines.append(f"| {r['task']} | {r['run']} | {r['baseline']} | {r['kl_diff']:+.4f} [{r['kl_diff_low']:+.4f}, "
                         f"{r['kl_diff_high']:+.4f}]{_verdict(r['kl_diff_low'], r['kl_diff_high'])} | "
                         f"{_pp(r['top1_diff'])} [{_pp(r['top1_diff_low'])}, {_pp(r['top1_diff_high'])}] pp |")
        lines += ["", "Held out: Δ = SemAlign − baseline on the same validation examples (negative KL: SemAlign is "
                  f"closer to the source); paired bootstrap over examples ({N_BOOT} resamples).", ""]
    if not bench.empty:
        lines += ["| benchmark | SemAlign run | baseline | n | Δ accuracy [95% CI] | SemAlign-only / baseline-only right "
                  "| exact McNemar p |", "|---|---|---|---|---|---|---|"]
        for _, r in bench.iterrows():
            lines.append(f"| {r['benchmark']} | {r['run']} | {r['baseline']} | {int(r['n'])} | {_pp(r['diff'])} "
                         f"[{_pp(r['ci_low'])}, {_pp(r['ci_high'])}] pp | {int(r['model_only'])} / "
                         f"{int(r['target_only'])} | {r['p']:.3g}{'' if r['significant'] else ', not significant'} |")
        lines += ["", "Benchmarks: Δ = SemAlign − baseline accuracy on the same items; Newcombe's paired interval, "
                  "two-sided exact McNemar; no multiplicity correction."]
    return "\n".join(lines) + "\n"


def heldout_markdown(tab: pd.DataFrame, reference: str = REFERENCE) -> str:
    if tab.empty:
        return ""
    lines = ["", "### Held-out agreement with the source (validation split)", "",
             "| task | model | KL(source ‖ model) | Δ KL vs target [95% CI] | top-1 agreement | Δ top-1 vs target "
             "[95% CI] | examples / positions |", "|---|---|---|---|---|---|---|"]
    for _, r in tab.iterrows():
        if r["model"] == reference:
            dkl = dtop = "(reference)"
        else:
            dkl = f"{r['kl_diff']:+.4f} [{r['kl_diff_low']:+.4f}, {r['kl_diff_high']:+.4f}]" + _verdict(
                r["kl_diff_low"], r["kl_diff_high"])
            dtop = f"{_pp(r['top1_diff'])} [{_pp(r['top1_diff_low'])}, {_pp(r['top1_diff_high'])}] pp" + _verdict(
                r["top1_diff_low"], r["top1_diff_high"])
        lines.append(f"| {r['task']} | {r['model']} | {r['kl']:.4f} | {dkl} | {100 * r['top1']:.1f}% | {dtop} | "
                     f"{int(r['examples'])} / {int(r['positions'])} |")
    lines += ["", "KL in nats per supervised position (position-weighted mean over the split); "
              "Δ = model − untouched target on the same examples (negative KL: closer to the source). Intervals: paired bootstrap over "
              f"validation examples ({N_BOOT} resamples, percentile); each seed's run on its own row."]
    return "\n".join(lines) + "\n"


def _verdict(low: float, high: float) -> str:
    return "" if low > 0 or high < 0 else " (not significant)"


def paired_markdown(tab: pd.DataFrame, detect: pd.DataFrame, reference: str = REFERENCE) -> str:
    if tab.empty:
        return ""
    lines = ["", f"### Benchmarks: each model against the untouched {reference} on the same items", "",
             "| benchmark | model | n | Δ accuracy [95% CI] | model-only / target-only right | exact McNemar p | |",
             "|---|---|---|---|---|---|---|"]
    for _, r in tab.iterrows():
        verdict = "significant" if r["significant"] else "not significant"
        lines.append(f"| {r['benchmark']} | {r['model']} | {int(r['n'])} | {_pp(r['diff'])} "
                     f"[{_pp(r['ci_low'])}, {_pp(r['ci_high'])}] pp | {int(r['model_only'])} / "
                     f"{int(r['target_only'])} | {r['p']:.3g} | {verdict} |")
    lines += ["", f"Δ = model − {reference} accuracy on the same items, in percentage points; interval: Newcombe's "
              "(1998) paired score interval; test: two-sided exact McNemar (binomial on the discordant items), "
              f"significant at p < {ALPHA}. Each seed's run is tested on its own; no multiplicity correction."]
    for _, d in detect.iterrows():
        what = ("no difference" if math.isnan(d["detectable"])
                else f"a difference of {100 * d['detectable']:.1f} points or more")
        lines.append(f"- {d['benchmark']}: n = {int(d['n'])}, discordance {100 * d['discordance']:.0f}% observed: "
                     f"{what} is detected with {100 * POWER:.0f}% power at α = {ALPHA}.")
    return "\n".join(lines) + "\n"


def summary(heldout: pd.DataFrame, paired: pd.DataFrame, reference: str = REFERENCE) -> dict:
    """The paired numbers for results.json (``dvc exp show`` columns)."""
    out: dict = {"heldout": {}, "paired": {}}
    for _, r in heldout.iterrows():
        entry = {"kl": round(float(r["kl"]), 6), "top1": round(float(r["top1"]), 6)}
        if r["model"] != reference:
            entry.update({k: round(float(r[k]), 6) for k in ("kl_diff", "kl_diff_low", "kl_diff_high", "top1_diff",
                                                             "top1_diff_low", "top1_diff_high")})
        out["heldout"].setdefault(r["task"], {})[r["model"]] = entry
    for _, r in paired.iterrows():
        out["paired"].setdefault(r["benchmark"], {})[r["model"]] = {
            "n": int(r["n"]), "diff": round(float(r["diff"]), 6), "ci_low": round(float(r["ci_low"]), 6),
            "ci_high": round(float(r["ci_high"]), 6), "p": round(float(r["p"]), 6),
            "significant": bool(r["significant"])}
    return out


def headline(heldout: pd.DataFrame, paired: pd.DataFrame, method: str = "semalign",
             reference: str = REFERENCE) -> str:
    """A few lines a researcher reads first: each run of ``method`` against the untouched target,
    its held-out KL change with the interval and each benchmark's paired test. Empty when
    neither was measured."""
    def runs(tab: pd.DataFrame) -> pd.DataFrame:
        return tab[tab["model"].map(lambda m: m == method or m.startswith(f"{method}-s"))] if len(tab) else tab

    lines = []
    for _, r in runs(heldout).iterrows():
        lines.append(f"- {r['model']} on {r['task']}, held-out KL(source ‖ model): {r['kl'] - r['kl_diff']:.4f} "
                     f"({reference}) -> {r['kl']:.4f}, change {r['kl_diff']:+.4f} [95% CI {r['kl_diff_low']:+.4f}, "
                     f"{r['kl_diff_high']:+.4f}]{_verdict(r['kl_diff_low'], r['kl_diff_high'])} "
                     f"({int(r['examples'])} validation examples, {int(r['positions'])} positions)")
    for _, r in runs(paired).iterrows():
        verdict = "significant" if r["significant"] else "not significant"
        lines.append(f"- {r['model']} on {r['benchmark']}: accuracy {_pp(r['diff'])} points vs {reference} "
                     f"[95% CI {_pp(r['ci_low'])}, {_pp(r['ci_high'])}], {int(r['model_only'])} gained / "
                     f"{int(r['target_only'])} lost, exact McNemar p = {r['p']:.3g}, {verdict} (n = {int(r['n'])})")
    if not lines:
        return ""
    return "\n".join(["### Headline: SemAlign against the untouched target", ""] + lines) + "\n"
