"""Terminal summary of a grid's current records (the paper-style files come from bench.reports).

Only what :meth:`bench.grid.store.ResultStore.grid_results` selects is shown: the records of the
grid's cells made by the grid's recipe. Every other cell of the grid is listed below the table
with the reason it has no number (failed: the error's first line; stale; not run).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.grid.record import METRICS, CellRecord
from bench.grid.store import GridResults


def _order(rec: CellRecord) -> tuple:
    return (rec.dataset, rec.budget is not None, rec.budget or 0, rec.inferred_kind() != "coreset", rec.method,
            rec.method_seed or 0)


def _seconds(cost: dict, digits: int) -> str:
    value = cost.get("seconds")
    return "" if value is None else f"{value:.{digits}f}"


def print_records(records: list[CellRecord], console: Console | None = None) -> None:
    """A table of ``records``: recall mean ± std per metric, method and evaluation seconds."""
    console = console or Console()
    if not records:
        console.print("no finished records")
        return
    first = records[0]
    title = f"recall (%) on {first.eval_split}, mean ± std over {len(first.eval_seeds) or len(first.per_seed)} evaluation seeds"
    table = Table(title=title)
    for col in ("dataset", "method", "pairs", "seed", *[m.upper() for m in METRICS], "method s", "eval s"):
        table.add_column(col, justify="left" if col in ("dataset", "method") else "right", no_wrap=True)
    for rec in sorted(records, key=_order):
        cells = ["{:.1f}±{:.1f}".format(*rec.metric_summary(m)) for m in METRICS]
        seed = "" if rec.method_seed is None else str(rec.method_seed)
        table.add_row(rec.dataset, rec.method, str(rec.n_pairs or ""), seed, *cells,
                      _seconds(rec.method_cost, 1), _seconds(rec.eval_cost, 0))
    console.print(table)


def print_grid_results(results: GridResults, console: Console | None = None) -> None:
    """The current records, then one line per cell of the grid that has no number."""
    console = console or Console()
    print_records(results.records, console)
    for cell_id, reason in results.missing.items():
        colour = "red" if reason.startswith("failed") else "yellow"
        console.print(f"[{colour}]missing[/{colour}] {escape(cell_id)}: {escape(reason)}", soft_wrap=True)


def print_tuning(result, console: Console) -> None:  # noqa: ANN001 - bench.grid.tuning.TuningResult
    """What phase 1 chose: per (dataset, method, budget) the chosen values, their val mean and
    how many trials ran (and failed)."""
    if not result.groups:
        return
    table = Table(title="tuning on val: the chosen parameters (mean recall on val over the trial's seeds)")
    for col in ("dataset", "method", "pairs", "trials", "failed", "chosen", "val mean", "cost s"):
        table.add_column(col, justify="left" if col in ("dataset", "method", "chosen") else "right")
    for group in result.groups:
        failed = sum(1 for t in group.trials if t.val_mean is None)
        chosen = group.chosen
        values = ", ".join(f"{k}={v}" for k, v in chosen.values.items()) if chosen else "[red]none: every trial failed[/red]"
        table.add_row(group.dataset, group.spec.key, str(group.budget), str(len(group.trials)), str(failed),
                      escape(values) if chosen else values,
                      f"{chosen.val_mean:.2f} ± {chosen.val_std:.2f}" if chosen else "", f"{group.cost_s:.0f}")
    console.print(table)
