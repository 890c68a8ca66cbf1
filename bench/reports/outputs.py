"""The files a finished grid leaves behind: tables in three formats and the budget plot."""

from __future__ import annotations

from pathlib import Path

from bench.core.io import write_text_atomic
from bench.grid.store import GridResults

TABLE_FORMATS = (("markdown", "md"), ("latex", "tex"), ("csv", "csv"))


def report_paths(results_dir: str | Path, dataset: str) -> list[Path]:
    root = Path(results_dir)
    return [root / "tables" / f"{dataset}.{suffix}" for _, suffix in TABLE_FORMATS] + [
        root / "plots" / f"{dataset}_recall_vs_budget.png"]


def write_reports(results_dir: str | Path, datasets: list[str], results: GridResults) -> None:
    """Write ``tables/<dataset>.{md,tex,csv}`` and ``plots/<dataset>_recall_vs_budget.png``
    under ``results_dir`` from the grid's current records only (``results``); the captions
    name the grid's cells that have no current number. A dataset of the grid without any
    current record loses its old tables and plot, so no file shows a number of another recipe."""
    from bench.reports.plots import plot_recall_vs_budget
    from bench.reports.records import FULL, aggregate
    from bench.reports.tables import paper_table, render

    root = Path(results_dir)
    agg = aggregate(results.records) if results.records else None
    for dataset in datasets:
        if agg is None or not (agg["dataset"] == dataset).any():
            for path in report_paths(root, dataset):
                path.unlink(missing_ok=True)
            continue
        table = paper_table(agg, dataset, missing=results.missing)
        for (fmt, _), path in zip(TABLE_FORMATS, report_paths(root, dataset)):
            write_text_atomic(path, render(table, fmt))
        plot = report_paths(root, dataset)[-1]
        if (agg[agg["dataset"] == dataset]["budget"] != FULL).any():
            plot_recall_vs_budget(agg, dataset, plot)
        else:
            plot.unlink(missing_ok=True)
