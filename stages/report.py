"""Stage: the results table from every evaluate stage's metrics.

    python stages/report.py [--source KEY]

Reads ``metrics/eval/<model>/<benchmark>.json`` and writes ``metrics/results.md`` and
``metrics/results.csv`` (rows: models, seeds grouped; columns: the four benchmarks, their
mean, the mean absolute gap to the source, and each method's measured cost from
``metrics/cost``), ``metrics/results.json`` (mean and gap per
model, for ``dvc exp show``), ``plots/results.csv`` (long format for
``dvc plots``) and ``plots/results.png``. The source key and the row order come from the
``evaluation`` block of params.yaml (``source_key``, ``models``) unless given here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the library, from the repo root

from pipeline.artifacts import atomic_path, write_json  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.runner import guarded  # noqa: E402
from pipeline.report import (bar_chart, collect, collect_costs, markdown, plot_rows,  # noqa: E402
                             summary_metrics, table)


def run(args: argparse.Namespace) -> None:
    block = {}
    if Path(args.params).is_file():
        block = load_params(args.params).get("evaluation") or {}
    source = args.source or block.get("source_key", "source")
    tab = table(collect(args.metrics_dir), source, block.get("models") or [], collect_costs(args.cost_dir))
    with atomic_path(args.out_md) as tmp:
        tmp.write_text(markdown(tab, source))
    with atomic_path(args.out_csv) as tmp:
        tab.round(4).to_csv(tmp, index=False)
    write_json(args.out_json, summary_metrics(tab))
    plot = plot_rows(tab)
    with atomic_path(args.plot_csv) as tmp:
        plot.to_csv(tmp, index=False)
    with atomic_path(args.plot_png) as tmp:
        bar_chart(plot, tmp)
    print(markdown(tab, source))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics-dir", default="metrics/eval")
    ap.add_argument("--cost-dir", default="metrics/cost", help="the method stages' cost records")
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
