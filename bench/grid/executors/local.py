"""The in-process executor: cells one after another, each retried up to ``max_retries``."""

from __future__ import annotations

from bench.core.env import torch_threads
from bench.grid.cell import execute_cell
from bench.grid.executors import Reporter
from bench.grid.spec import Cell, GridConfig


def run_local(grid: GridConfig, todo: list[Cell], reporter: Reporter, progress: bool) -> None:
    # The same thread count as a Ray task gets, so both executors give identical numbers
    # (reductions in conv kernels may be ordered differently with more threads).
    with torch_threads(grid.runner.cpus_per_task):
        for cell in todo:
            reporter.started(cell.id)
            for attempt in range(1, grid.runner.max_retries + 2):
                try:
                    execute_cell(grid, cell, progress=progress)
                    reporter.finished(cell, None, attempt)
                    break
                except Exception as exc:  # noqa: BLE001 - recorded, the grid goes on
                    if attempt > grid.runner.max_retries:
                        reporter.finished(cell, exc, attempt)
