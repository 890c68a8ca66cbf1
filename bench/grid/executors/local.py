"""The in-process executor: cells one after another, each retried up to ``max_retries`` and
stopped at ``runner.cell_timeout_s``."""

from __future__ import annotations

import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from bench.core.env import torch_threads
from bench.core.io import is_disk_full
from bench.grid.cell import execute_cell
from bench.grid.executors import Reporter, timeout_error
from bench.grid.spec import Cell, GridConfig


class CellTimeout(BaseException):
    """Raised inside a cell that ran past its time limit. A BaseException, like
    KeyboardInterrupt, so that a method's ``except Exception`` cannot swallow it."""


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CellTimeout` in this (the main) thread once ``seconds`` have passed.

    SIGALRM interrupts a blocking call (a sleep, a lock, a read) as well as Python code, and
    the exception unwinds the cell normally: its ``finally`` blocks run, temporary files go,
    no record is written. Code stuck inside one C call that never returns to Python cannot be
    stopped this way (the Ray executor kills the worker process instead). A timer set before
    (e.g. pytest-timeout's) is restored with the time it had left. Outside the main thread
    there are no signals: the limit is then not enforced, with a warning."""
    if seconds is None:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        warnings.warn("runner.cell_timeout_s is enforced only when cells run in the main thread", stacklevel=3)
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise CellTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # a timer someone else had set (e.g. pytest-timeout's) runs on
            left = outer_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), outer_interval)


def run_local(grid: GridConfig, todo: list[Cell], reporter: Reporter, progress: bool) -> None:
    # The same thread count as a Ray task gets, so both executors give identical numbers
    # (reductions in conv kernels may be ordered differently with more threads).
    limit = grid.runner.cell_timeout_s
    with torch_threads(grid.runner.cpus_per_task):
        for cell in todo:
            reporter.started(cell.id)
            for attempt in range(1, grid.runner.max_retries + 2):
                error: BaseException | None = None
                try:
                    with deadline(limit):
                        execute_cell(grid, cell, progress=progress)
                except CellTimeout:  # not retried: it would run out of time again
                    error = timeout_error(limit)  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001 - recorded, the grid goes on
                    if attempt <= grid.runner.max_retries and not is_disk_full(exc):
                        continue
                    error = exc
                reporter.finished(cell, error, attempt)
                break
