"""Terminal summary of finished records (the paper-style files come from bench.reports)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

METRICS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "mean")


def _order(rec: dict[str, Any]) -> tuple:
    return (rec["dataset"], rec["budget"] is not None, rec["budget"] or 0, rec["kind"] != "coreset", rec["method"], rec["method_seed"] or 0)


def print_records(records: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    if not records:
        console.print("no finished records")
        return
    first = records[0]
    title = f"recall (%) on {first['eval_split']}, mean ± std over {len(first['eval_seeds'])} evaluation seeds"
    table = Table(title=title)
    for col in ("dataset", "method", "pairs", "seed", *[m.upper() for m in METRICS], "method s", "eval s"):
        table.add_column(col, justify="left" if col in ("dataset", "method") else "right", no_wrap=True)
    for rec in sorted(records, key=_order):
        cells = [f"{rec['summary'][m]['mean']:.1f}±{rec['summary'][m]['std']:.1f}" for m in METRICS]
        seed = "" if rec["method_seed"] is None else str(rec["method_seed"])
        table.add_row(rec["dataset"], rec["method"], str(rec["n_pairs"]), seed, *cells,
                      f"{rec['method_cost']['seconds']:.1f}", f"{rec['eval_cost']['seconds']:.0f}")
    console.print(table)
