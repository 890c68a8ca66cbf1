"""Terminal summary of a grid's current records (the paper-style files come from bench.reports).

Only what :meth:`bench.grid.store.ResultStore.grid_results` selects is shown: the records of the
grid's cells made by the grid's recipe. Every other cell of the grid is listed below the table
with the reason it has no number (failed: the error's first line; stale; not run).

The rows are those of the paper tables (:mod:`bench.reports.summary`): per budget, random, the
other coresets, distillation; ``full`` last; cells pooled over evaluation runs and method seeds;
``norm`` as in the tables; the best method of each budget marked (``full`` excluded); a cell of
one evaluation run shows its value alone (no "± 0.0": there is no spread to show).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.grid.record import METRICS, CellRecord
from bench.grid.store import GridResults
from bench.reports.summary import SummaryRow, summary_rows
from bench.reports.tables import MIN_NORM_GAP

BEST = "*"
BEST_NOTE = (f"{BEST} best mean recall at its budget (full, the whole training set, is excluded); "
             "n = evaluation runs pooled per cell (evaluation seeds x method seeds); "
             "norm = (method - random) / (full - random); method s = seconds to produce the set, the matching "
             "time of a reused or continued checkpoint included (mean over method seeds)")

NO_NORM = (f"norm –: no random row at that budget or no full row, or full less than {MIN_NORM_GAP} points "
           "above random")


def _cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {std:.1f}"


def _seconds(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(rows: list[SummaryRow], title: str) -> Table:
    table = Table(title=title)
    for col in ("pairs", "method", "best", *[m.upper() for m in METRICS], "norm", "n", "method s", "eval s"):
        table.add_column(col, justify="left" if col in ("method", "best") else "right", no_wrap=True)
    for i, row in enumerate(rows):
        cells = [_cell(*row.cells[m], row.n) if m in row.cells else "–" for m in METRICS]
        if row.best:
            cells[-1] = f"[bold green]{cells[-1]}[/bold green]"
        first_of_budget = i == 0 or rows[i - 1].budget != row.budget
        last_of_budget = i + 1 < len(rows) and rows[i + 1].budget != row.budget
        table.add_row(str(row.budget) if first_of_budget else "", escape(row.method), BEST if row.best else "", *cells,
                      "–" if row.norm is None else f"{row.norm:.2f}", str(row.n),
                      _seconds(row.method_seconds, 1), _seconds(row.eval_seconds, 0), end_section=last_of_budget)
    return table


def print_records(records: list[CellRecord], console: Console | None = None) -> None:
    """One table per dataset: recall per metric (mean ± std over the pooled evaluation runs),
    norm, n, method and evaluation seconds (mean over method seeds), best per budget marked."""
    console = console or Console()
    if not records:
        console.print("no finished records")
        return
    first, marked, no_norm = records[0], False, False
    for dataset in sorted({r.dataset for r in records}):
        rows, protocol = summary_rows(records, dataset)
        marked |= any(r.best for r in rows)
        no_norm |= any(r.norm is None for r in rows)
        spread = ("n = 1 evaluation run per cell: no ± std" if {r.n for r in rows} == {1}
                  else "mean ± std over n pooled evaluation runs (n = 1: the value alone)")
        where = "" if protocol in (None, "suite") else f", protocol {protocol}"
        console.print(_table(rows, f"{dataset}: recall (%) on the {first.eval_split} split, final epoch{where}; "
                                   f"{spread}"))
    note = BEST_NOTE if marked else BEST_NOTE.split("; ", 1)[1]
    console.print(note + (f" ({NO_NORM})" if no_norm else ""), soft_wrap=True)

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
