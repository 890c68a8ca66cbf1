"""Terminal summary of finished records (the paper-style files come from bench.reports)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

METRICS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "mean")


def print_records(records: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    first = records[0]
    title = f"{first['dataset']}: recall (%) on {first['eval_split']}, mean ± std over {len(first['eval_seeds'])} evaluation seeds"
    table = Table(title=title)
    for col in ("method", "pairs", *[m.upper() for m in METRICS]):
        table.add_column(col, justify="right" if col != "method" else "left", no_wrap=True)
    for rec in records:
        cells = [f"{rec['summary'][m]['mean']:.1f}±{rec['summary'][m]['std']:.1f}" for m in METRICS]
        label = rec["method"] if rec["method_seed"] is None else f"{rec['method']} s{rec['method_seed']}"
        table.add_row(label, str(rec["n_pairs"]), *cells)
    console.print(table)
