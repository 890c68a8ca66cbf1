"""The files a finished grid leaves behind: tables in three formats and the plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.core.io import write_text_atomic
from bench.grid.record import CellRecord
from bench.grid.store import GridResults

TABLE_FORMATS = (("markdown", "md"), ("latex", "tex"), ("csv", "csv"))


def report_paths(results_dir: str | Path, dataset: str) -> list[Path]:
    """Every file :func:`write_reports` may write for ``dataset`` (the curve plots by glob)."""
    root = Path(results_dir)
    tables = [root / "tables" / f"{dataset}{part}.{suffix}" for part in ("", "_selection", "_students", "_tuning")
              for _, suffix in TABLE_FORMATS]
    return tables + [root / "plots" / f"{dataset}_recall_vs_budget.png",
                     *sorted((root / "plots").glob(f"{dataset}_curves_b*.png"))]


def has_curves(records: Sequence[CellRecord]) -> bool:
    """Every evaluation run of every record has a curve (the val/test rules can be read)."""
    return bool(records) and all(seed.get("curve") for rec in records for runs in rec.runs().values() for seed in runs)


def render_tables(records: Sequence[CellRecord], dataset: str, missing: dict[str, str] | None = None,
                  select: str = "final", reference=None, source: str = "vl-distill"):  # noqa: ANN001, ANN201
    """The paper tables of one dataset: one per (student, protocol) block, in ``select``'s rule
    (with an ``optimism`` row when it is not ``final``); with a ``reference``, each caption says
    where the block's setting (read from the records) differs from the published one."""
    from bench.reports.records import aggregate, blocks
    from bench.reports.setting import our_setting
    from bench.reports.tables import paper_table

    from bench.reports.tuning import tuning_caption

    agg = aggregate(records, select)
    final = aggregate(records) if select != "final" else None
    tables = [paper_table(agg, dataset, reference=reference, source=source, missing=missing, student=student,
                          protocol=protocol, select=select, final=final,
                          setting=our_setting(records, dataset, student, protocol, select))
              for student, protocol in blocks(agg, dataset)]
    how = tuning_caption([r for r in records if r.dataset == dataset])
    for table in tables:  # every caption says how the parameters were chosen
        table.attrs["caption"] = f"{table.attrs.get('caption', '')} {how}".strip()
    return tables


def write_reports(results_dir: str | Path, datasets: list[str], results: GridResults) -> None:
    """Write under ``results_dir`` from the grid's current records only (``results``):
    ``tables/<dataset>.{md,tex,csv}`` (the paper tables, final epoch, one per student and
    protocol), ``tables/<dataset>_selection.*`` (final / val / test-selected side by side, when
    the runs have curves), ``tables/<dataset>_students.*`` (cross-architecture, with more than
    one student), ``plots/<dataset>_recall_vs_budget.png`` and ``plots/<dataset>_curves_b<B>.png``.
    The captions name the grid's cells that have no current number. A file of a dataset that
    the current records no longer produce is removed, so no file shows a number of another recipe."""
    import pandas as pd

    from bench.reports.plots import plot_curves, plot_recall_vs_budget
    from bench.reports.records import FULL, aggregate, blocks
    from bench.reports.tables import render, selection_table, students_table
    from bench.reports.tuning import tuning_table

    root = Path(results_dir)
    for dataset in datasets:
        records = [r for r in results.records if r.dataset == dataset]
        written: set[Path] = set()

        def write(name: str, tables: list[pd.DataFrame]) -> None:
            for fmt, suffix in TABLE_FORMATS:
                path = root / "tables" / f"{dataset}{name}.{suffix}"
                write_text_atomic(path, "\n".join(render(t, fmt) for t in tables))
                written.add(path)

        if records:
            write("", render_tables(records, dataset, results.missing))
            agg = aggregate(records)
            # Selection reads test points of the curves: a grid evaluated on val (a tuning grid) has none.
            if has_curves(records) and all(r.eval_split in (None, "test") for r in records):
                aggs = {rule: aggregate(records, rule) for rule in ("final", "val", "test")}
                write("_selection", [selection_table(aggs, dataset, s, p) for s, p in blocks(agg, dataset)
                                     if s == "source"])
                budgets = sorted({r.budget for r in records if r.budget is not None})
                for budget in budgets:
                    written.add(plot_curves(records, dataset, budget, root / "plots" / f"{dataset}_curves_b{budget}.png"))
            if len({s for s, _ in blocks(agg, dataset)}) > 1:
                protocols = list(dict.fromkeys(p for _, p in blocks(agg, dataset)))
                write("_students", [students_table(agg, dataset, p) for p in protocols])
            tuned = tuning_table(records, dataset)
            if tuned is not None:
                write("_tuning", [tuned])
            if (agg["budget"] != FULL).any():
                written.add(plot_recall_vs_budget(agg, dataset, root / "plots" / f"{dataset}_recall_vs_budget.png"))
        for path in report_paths(root, dataset):
            if path not in written:
                path.unlink(missing_ok=True)
