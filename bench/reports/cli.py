"""``run_bench.py table RESULTS_DIR ...``: records -> tables (and optionally a plot).

Heavy imports (pandas, matplotlib) happen inside :func:`table_command`, so building the
top-level parser stays fast for every other subcommand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_table_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``table`` options to ``parser`` and make :func:`table_command` its handler."""
    parser.add_argument("results_dir", help="results directory (holding records/*.json) or a records directory")
    parser.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown", help="table format")
    parser.add_argument("--reference", metavar="FILE|paper",
                        help="published numbers to show beside ours: a CSV in long format, or 'paper' for the bundled one")
    parser.add_argument("--source", default="vl-distill",
                        help="preferred source when several papers publish a number (default: vl-distill)")
    parser.add_argument("--dataset", help="only this dataset (default: every dataset in the records)")
    parser.add_argument("--output", metavar="FILE", help="write the table(s) to FILE instead of printing them")
    parser.add_argument("--plot", metavar="PNG",
                        help="also write a recall-vs-budget plot (several datasets: one file each, NAME_<dataset>.png)")
    parser.set_defaults(func=table_command)
    return parser


def _plot_path(plot: str, dataset: str, several: bool) -> Path:
    path = Path(plot)
    return path.with_name(f"{path.stem}_{dataset}{path.suffix or '.png'}") if several else path


def table_command(args: argparse.Namespace) -> int:
    """Render the tables; 0 on success, 2 (with a message on stderr) on a usage/data error."""
    import pandas as pd

    from bench.io import write_text_atomic
    from bench.reports.records import RecordError, aggregate, load_records
    from bench.reports.tables import ReferenceError, load_reference, paper_table, render

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    try:
        records = load_records(args.results_dir)
        if not records:
            return fail(f"no finished result records in {args.results_dir} (looked for records/*.json)")
        agg = aggregate(records)
        reference = load_reference(args.reference) if args.reference else None
    except (FileNotFoundError, RecordError, ReferenceError) as exc:
        return fail(str(exc))
    datasets = sorted(agg["dataset"].unique())
    if args.dataset:
        if args.dataset not in datasets:
            return fail(f"no records for dataset {args.dataset!r}; have {', '.join(datasets)}")
        datasets = [args.dataset]
    tables = [paper_table(agg, d, reference=reference, source=args.source) for d in datasets]
    if args.format == "csv" and len(tables) > 1:  # one CSV: the dataset becomes the first index level
        text = render(pd.concat(tables, keys=datasets, names=["dataset"]).fillna("\u2013"), "csv")
    else:
        text = "\n".join(render(t, args.format) for t in tables)
    if args.output:
        write_text_atomic(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    if args.plot:
        from bench.reports.plots import plot_recall_vs_budget

        for d in datasets:
            try:
                out = plot_recall_vs_budget(agg, d, _plot_path(args.plot, d, len(datasets) > 1))
            except ValueError as exc:
                return fail(str(exc))
            print(f"wrote {out}", file=sys.stderr)
    return 0
