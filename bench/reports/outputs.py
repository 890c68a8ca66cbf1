"""The files a finished grid leaves behind: tables in three formats and the budget plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.grid import GridConfig
from bench.io import write_text_atomic


def write_reports(grid: GridConfig) -> list[dict[str, Any]]:
    """Write ``tables/<dataset>.{md,tex,csv}`` and ``plots/<dataset>_recall_vs_budget.png``
    under the results directory from every finished record there; returns those records."""
    from bench.reports.plots import plot_recall_vs_budget
    from bench.reports.records import aggregate, load_records
    from bench.reports.tables import paper_table, render

    root = Path(grid.results_dir)
    if not (root / "records").is_dir():
        return []
    records = load_records(root)
    if not records:
        return records
    agg = aggregate(records)
    for dataset in sorted(agg["dataset"].unique()):
        table = paper_table(agg, dataset)
        for fmt, suffix in (("markdown", "md"), ("latex", "tex"), ("csv", "csv")):
            write_text_atomic(root / "tables" / f"{dataset}.{suffix}", render(table, fmt))
        if (agg[(agg["dataset"] == dataset)]["budget"] != "full").any():
            plot_recall_vs_budget(agg, dataset, root / "plots" / f"{dataset}_recall_vs_budget.png")
    return records
