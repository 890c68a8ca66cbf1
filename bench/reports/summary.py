"""The rows of the terminal summary: which method won at each budget.

The summary shows the numbers of the paper tables (:func:`bench.reports.tables.paper_table`),
in their order and from the same code: records are pooled by
:func:`bench.reports.records.aggregate` (all evaluation runs of all method seeds of a cell),
methods are ordered by :func:`bench.reports.records.method_order` (random, the other coresets,
distillation, then ``full``), and ``norm`` is :func:`bench.reports.tables.normalised`. Only the
headline block is summarised: the grid's own student under its first protocol, final epoch.

"Best" is the highest pooled mean recall at a budget among the budget-sized sets; the
whole-training-set reference (``full``) is excluded (it is the ceiling, not a contender), and a
budget with a single method has no best.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.grid.record import METRICS, CellRecord
from bench.reports.records import FULL, SOURCE, aggregate, block_of, blocks, method_order
from bench.reports.tables import normalised


@dataclass(frozen=True)
class SummaryRow:
    """One (budget, method) of a dataset: pooled (mean, std) per metric, the number of pooled
    evaluation runs ``n``, ``norm`` (None where the tables show "–"), whether it is the best
    at its budget, and the mean seconds of the method and of its evaluation over its records."""

    dataset: str
    budget: Any  # an int, or FULL for the whole-training-set reference
    method: str
    cells: dict[str, tuple[float, float]]
    n: int
    norm: float | None
    best: bool
    method_seconds: float | None
    eval_seconds: float | None


def _mean_seconds(records: Sequence[CellRecord], seconds: Callable[[CellRecord], float | None]) -> float | None:
    """The mean over the cell's method seeds of ``seconds`` of each record (None: none says)."""
    values = [float(v) for v in map(seconds, records) if v is not None]
    return float(np.mean(values)) if values else None


def summary_rows(records: Sequence[CellRecord], dataset: str) -> tuple[list[SummaryRow], str | None]:
    """The summary of one dataset: rows budget by budget (each in the tables' method order),
    the ``full`` reference last; and the protocol of the block shown."""
    agg = aggregate([r for r in records if r.dataset == dataset])
    protocol = next((p for s, p in blocks(agg, dataset) if s == SOURCE), None)
    data = block_of(agg, dataset, SOURCE, protocol)
    cells = {(r.method, r.budget, r.metric): (r.mean, r.std, r.n) for r in data.itertuples()}
    full_cols = sorted(data.loc[data["budget"] == FULL, "method"].unique())
    budgets = sorted({int(b) for b in data["budget"] if b != FULL})
    by_cell: dict[tuple[str, Any], list[CellRecord]] = {}
    for rec in records:
        if rec.dataset == dataset:
            by_cell.setdefault((rec.method, FULL if rec.budget is None else int(rec.budget)), []).append(rec)

    def row(method: str, budget: Any, best: bool) -> SummaryRow:
        mine = by_cell.get((method, budget), [])
        return SummaryRow(
            dataset=dataset, budget=budget, method=method,
            cells={m: cells[(method, budget, m)][:2] for m in METRICS if (method, budget, m) in cells},
            n=int(cells[(method, budget, "mean")][2]) if (method, budget, "mean") in cells else 0,
            norm=normalised(data, method, budget if budget != FULL else (budgets or [FULL])[0], full_cols),
            best=best, method_seconds=_mean_seconds(mine, CellRecord.set_seconds),
            eval_seconds=_mean_seconds(mine, lambda r: r.eval_cost.get("seconds")))

    rows: list[SummaryRow] = []
    for budget in budgets:
        present = [m for m in method_order(data) if (m, budget, "mean") in cells]
        means = {m: cells[(m, budget, "mean")][0] for m in present}
        top = max(means.values()) if len(means) > 1 else None
        rows += [row(m, budget, top is not None and means[m] == top) for m in present]
    rows += [row(m, FULL, False) for m in full_cols]
    return rows, protocol


def best_methods(rows: Sequence[SummaryRow]) -> dict[Any, list[str]]:
    """budget -> the method(s) marked best there (ties share the mark)."""
    out: dict[Any, list[str]] = {}
    for r in rows:
        if r.best:
            out.setdefault(r.budget, []).append(r.method)
    return out

