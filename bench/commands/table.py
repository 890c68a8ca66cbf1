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
    parser.add_argument("--source", default=None,
                        help="preferred source when several papers publish a number (with --reference; "
                             "default: vl-distill)")
    parser.add_argument("--dataset", help="only this dataset (default: every dataset in the records)")
    parser.add_argument("--reference-dataset", metavar="NAME",
                        help="compare with the published numbers of this dataset (e.g. flickr30k for the embedded "
                             "generator in Flickr30K's shape); with --reference, also prints the rank agreement")
    parser.add_argument("--select", choices=("final", "val", "test"), default="final",
                        help="which epoch of each evaluation run to report: the last (default), the one with the "
                             "best val mean (val-selected), or the best test epoch (test-selected, optimistic: what "
                             "LoRS and RepBlend report); val and test need runs with evaluation.eval_every")
    parser.add_argument("--output", metavar="FILE", help="write the table(s) to FILE instead of printing them")
    parser.add_argument("--plot", metavar="PNG",
                        help="also write a recall-vs-budget plot (several datasets: one file each, NAME_<dataset>.png)")
    parser.set_defaults(func=table_command)
    return parser


def _plot_path(plot: str, dataset: str, several: bool) -> Path:
    path = Path(plot)
    return path.with_name(f"{path.stem}_{dataset}{path.suffix or '.png'}") if several else path


def _grid_records(results_dir: str) -> tuple[list, dict[str, str]]:
    """The records a table of ``results_dir`` may show, and the missing cells (id -> reason).

    With ``grid.json`` (written by every run): exactly the records of the grid last run there
    whose hash matches it; the rest are counted in a note on stderr. Without it (results of an
    older version, or a bare records directory): every record, refused if they mix recipes.
    Either way a record counts only while its set file has the size and sha256 it gives (the
    rule a run applies before skipping a cell)."""
    from bench.grid.store import ResultStore
    from bench.reports.records import check_one_recipe, load_records

    root = Path(results_dir)
    if root.name == "records" and (root.parent / "grid.json").is_file():
        root = root.parent
    store = ResultStore(root)
    manifest = store.read_manifest() if root.is_dir() else None
    if manifest is None:
        # A set file's path is relative to the results directory (the parent of a bare records/).
        base = root.parent if root.name == "records" and not (root / "records").is_dir() else root
        records, missing = ResultStore(base).with_sets(load_records(root))
        check_one_recipe(records)
        if missing:
            print(f"note: missing: {'; '.join(f'{c} ({why})' for c, why in missing.items())}", file=sys.stderr)
        return records, missing
    results = store.grid_results(manifest.cells)
    if results.ignored:
        print(f"note: {results.ignored} record(s) in {root / 'records'} belong to no cell of grid "
              f"{manifest.name!r} (grid.json) with its current recipe; not shown", file=sys.stderr)
    if results.missing:
        print(f"note: {results.missing_line()}", file=sys.stderr)
    return results.records, results.missing


def table_command(args: argparse.Namespace) -> int:
    """Render the tables; 0 on success. A usage or data error is a :class:`bench.core.errors.UserError`,
    reported (one line, exit status 2) by :func:`bench.commands.cli.main` like every command's."""
    import pandas as pd

    from bench.core.io import write_text_atomic
    from bench.reports.outputs import render_tables
    from bench.reports.records import aggregate
    from bench.reports.tables import check_source, load_reference, render

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    records, missing = _grid_records(args.results_dir)  # a RecordError reaches the CLI: one line
    if not records:
        return fail(f"no finished result records in {args.results_dir} (looked for records/*.json)")
    agg = aggregate(records)
    reference = load_reference(args.reference) if args.reference else None
    if args.reference_dataset:
        if reference is None:
            return fail("--reference-dataset needs --reference (a CSV or 'paper')")
        from bench.reports.agreement import reference_as
        try:
            reference = reference_as(reference, args.reference_dataset, sorted(agg["dataset"].unique()))
        except ValueError as exc:
            return fail(str(exc))
    if args.source is not None and reference is None:
        return fail(f"--source {args.source!r} chooses among the published numbers of --reference; "
                    "give --reference FILE or --reference paper too")
    if args.source is not None:
        check_source(reference, args.source, args.reference)
    source = args.source or "vl-distill"
    datasets = sorted(agg["dataset"].unique())
    if args.dataset:
        if args.dataset not in datasets:
            return fail(f"no records for dataset {args.dataset!r}; have {', '.join(datasets)}")
        datasets = [args.dataset]
    by_dataset = {d: render_tables([r for r in records if r.dataset == d], d, missing, args.select, reference,
                                   source) for d in datasets}
    tables = [t for d in datasets for t in by_dataset[d]]
    tables += agreement_tables(agg, datasets, reference, args) if args.format != "csv" else []
    if args.format == "csv" and len(tables) > 1:  # one CSV: dataset, student and protocol become index levels
        keys = [(d, t.attrs["student"], t.attrs["protocol"]) for d in datasets for t in by_dataset[d]]
        text = render(pd.concat(tables, keys=keys, names=["dataset", "student", "protocol"]).fillna("\u2013"), "csv")
    else:
        text = "\n".join(render(t, args.format) for t in tables)
    from bench.reports.tuning import tuning_table

    tuned = [t for t in (tuning_table(records, d) for d in datasets) if t is not None]
    if tuned and args.format != "csv":  # how the parameters were chosen, after the tables
        text = text.rstrip("\n") + "\n\n" + "\n".join(render(t, args.format) for t in tuned)
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


def agreement_tables(agg, datasets: list[str], reference, args: argparse.Namespace) -> list:  # noqa: ANN001
    """With a reference, one table per dataset: Kendall's tau per budget between our ordering
    of the methods and the published one (bench.reports.agreement)."""
    if reference is None:
        return []
    from bench.reports.agreement import rank_agreement

    return [rank_agreement(agg, d, reference, source=args.source, published_name=args.reference_dataset)
            for d in datasets]
