"""Stage `report`: the results table from every evaluate stage's metrics.

    python -m stages.report [--source KEY]

Reads ``metrics/eval/<model>/<benchmark>.json`` and writes ``metrics/results.md`` and
``metrics/results.csv`` (rows: models, seeds grouped; columns: the four benchmarks, their
mean, the mean absolute gap to the source, each method's measured cost from
``metrics/cost`` and its budget from params.yaml and chain.yaml), ``metrics/results.json``
(mean, gap, cost and budget per model, and the paired comparisons, for ``dvc exp show``),
``plots/results.csv`` (long format for ``dvc plots``) and ``plots/results.png``. The
Markdown adds the paired comparisons with the untouched target: held-out agreement from
``artifacts/heldout`` and per-item benchmark tests from ``artifacts/eval/*/*/samples.jsonl``,
and the budget of every (method, task). The source key and the row order come from the
``evaluation`` block of params.yaml (``source_key``, ``models``) unless given here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.evaluation import budget, comparisons
from pipeline.core.artifacts import atomic_path, write_json
from pipeline.core.chain import load_chain
from pipeline.core.params import load_params
from pipeline.core.runner import guarded
from pipeline.evaluation.report import (bar_chart, budget_frame, budget_markdown, collect, collect_costs,
                                        markdown, order_rows, plot_rows, summary_metrics, table)


def run(args: argparse.Namespace) -> None:
    params = load_params(args.params) if Path(args.params).is_file() else {}
    block = params.get("evaluation") or {}
    source = args.source or block.get("source_key", "source")
    preferred = block.get("models") or []
    budgets = None
    if params and Path(args.chain).is_file():  # without them (a results folder alone) no budget is stated
        budgets = budget_frame(budget.run_budgets(params, budget.chain_depths(load_chain(Path(args.chain)))))
    tab = table(collect(args.metrics_dir), source, preferred, collect_costs(args.cost_dir), budgets)
    heldout = order_rows(comparisons.heldout_table(args.heldout_dir), source, preferred, "task")
    paired = order_rows(comparisons.paired_benchmarks(args.samples_dir), source, preferred, "benchmark")
    top = comparisons.headline(heldout, paired)
    versus = comparisons.head_to_head(args.heldout_dir, args.samples_dir, untouched=(comparisons.REFERENCE, source))
    md = ((top + "\n" if top else "") + markdown(tab, source) + comparisons.heldout_markdown(heldout)
          + comparisons.paired_markdown(paired, comparisons.detectable(paired) if len(paired) else paired)
          + comparisons.head_to_head_markdown(*versus) + budget_markdown(budgets))
    with atomic_path(args.out_md) as tmp:
        tmp.write_text(md)
    with atomic_path(args.out_csv) as tmp:
        tab.round(4).to_csv(tmp, index=False)
    write_json(args.out_json, {**summary_metrics(tab), **comparisons.summary(heldout, paired)})
    plot = plot_rows(tab)
    with atomic_path(args.plot_csv) as tmp:
        plot.to_csv(tmp, index=False)
    with atomic_path(args.plot_png) as tmp:
        bar_chart(plot, tmp)
    print(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics-dir", default="metrics/eval")
    ap.add_argument("--cost-dir", default="metrics/cost", help="the method stages' cost records")
    ap.add_argument("--heldout-dir", default="artifacts/heldout", help="per-example held-out records")
    ap.add_argument("--samples-dir", default="artifacts/eval", help="per-item benchmark verdicts")
    ap.add_argument("--chain", default="chain.yaml", help="the frontier chain (target depth per task)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--source", help="model key the gap is measured to (default: evaluation.source_key)")
    ap.add_argument("--out-md", default="metrics/results.md")
    ap.add_argument("--out-csv", default="metrics/results.csv")
    ap.add_argument("--out-json", default="metrics/results.json", help="mean and gap per model (DVC metrics)")
    ap.add_argument("--plot-csv", default="plots/results.csv")
    ap.add_argument("--plot-png", default="plots/results.png")
    args = ap.parse_args(argv)
    return guarded("report", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
