"""Executors: how the pending cells of a grid are run. Both run :func:`bench.grid.cell.execute_cell`
and tell a :class:`Reporter` what happened; the grid run (:mod:`bench.grid.runner`) does the rest.

- :mod:`bench.grid.executors.local`: in this process, one cell after another.
- :mod:`bench.grid.executors.ray_dispatch`: one Ray task per expert, proxy and cell, started by our
  own dispatcher in priority order as inputs become ready.
"""

from __future__ import annotations

from typing import Protocol

from bench.grid.spec import Cell


class Reporter(Protocol):
    """What an executor tells the grid run."""

    def started(self, name: str) -> None:
        """A job (a cell id, or e.g. ``expert 0 of embedded``) starts."""

    def ended(self, name: str, error: BaseException | None) -> None:
        """A job that is not a cell (an expert, a proxy) ended: ``error`` None when it succeeded."""

    def finished(self, cell: Cell, error: BaseException | None, attempts: int, written_to: str | None = None) -> None:
        """A cell ended: ``error`` None when its record is written, else why it failed after
        ``attempts`` tries (0: never started, because an input it needs failed). ``written_to``:
        where a remote worker says it wrote the record (``host:/path``), for the driver to check."""


def timeout_error(limit_s: float) -> TimeoutError:
    """What the failure record of a cell stopped at ``runner.cell_timeout_s`` says."""
    return TimeoutError(f"the cell ran longer than runner.cell_timeout_s = {limit_s:g} s and was stopped "
                        "(not retried); raise the limit or make the method faster")
