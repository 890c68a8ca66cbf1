"""Run a grid: plan its cells, check the run can succeed, execute what is pending, record.

Where things live:
  bench/grid/cell.py                    one cell: prepare its inputs, run the method, evaluate, record
  bench/grid/executors/local.py         cells one after another in this process
  bench/grid/executors/ray_dispatch.py  one Ray task per expert / proxy / cell, dispatched by priority
  bench/grid/store.py                   the results directory (records, failures, grid.json)

:class:`GridRun` does what happens once per run, in the driver: validate the output and cache
directories before any compute, prepare every dataset (and check the budgets against it),
write ``grid.json`` (the cells and hashes the reports will show), move the records of an older
recipe of a planned cell aside, skip finished cells, hand the rest to an executor and write a
failure record for every cell that failed. A cell writes its own record, so a killed driver
loses at most the cells in flight; re-running skips every cell whose record has the same hash.
"""

from __future__ import annotations

from typing import Any

from bench.core.config import ConfigError
from bench.core.io import (
    SHARED_TEMP_MAX_AGE_S,
    check_writable_dir,
    remove_stale_temp_files,
)
from bench.grid.cell import failure_record, prepared
from bench.grid.spec import Cell, GridConfig, plan_cells, resolve_cell
from bench.grid.store import GridResults, ResultStore
from bench.registry import load_plugins


class GridRun:
    """Plans the cells, skips finished ones, executes the rest, records failures."""

    def __init__(self, grid: GridConfig, plugins: list[str] | None = None, progress: bool = True) -> None:
        self.grid = grid
        self.plugins = list(plugins or [])
        self.progress = progress
        self.store = ResultStore(grid.results_dir)
        self.cells = plan_cells(grid)
        load_plugins(self.plugins)  # a plugin method's class enters its cells' hashes
        self.hashes = {c.id: resolve_cell(grid, c).hash for c in self.cells}
        self.done: list[Cell] = []
        self.failed: list[Cell] = []
        self.skipped: list[Cell] = []
        self.retired: list[str] = []
        self._bar: Any = None
        self._task: Any = None

    def pending(self, retire_stale: bool = False) -> list[Cell]:
        """The cells without a finished record of this recipe (each record read once); the
        others are ``skipped``. ``retire_stale``: move aside the record of a planned cell made
        by another recipe, so a cell that now fails (or is not reached) never shows its old
        number."""
        todo, self.skipped = [], []
        for cell in self.cells:
            record = self.store.read_record(cell)
            if record is not None and record.cell_hash == self.hashes[cell.id]:
                self.skipped.append(cell)
                continue
            if record is not None and retire_stale:
                self.store.retire(cell)
                self.retired.append(cell.id)
            todo.append(cell)
        return todo

    def check_outputs(self) -> None:
        """The results and cache directories take files (exist or can be made, are writable,
        have room), checked before any work so a bad path costs nothing."""
        check_writable_dir(self.grid.results_dir, "results_dir")
        check_writable_dir(self.grid.cache_dir, "cache_dir")

    def check_budgets(self) -> None:
        for data_cfg in self.grid.datasets:
            n = prepared(self.grid, data_cfg.name, self.progress).train.n_captions
            too_big = [b for b in self.grid.budgets if b > n]
            if too_big:
                raise ConfigError(f"budgets: budget {too_big[0]} is larger than the training set of "
                                  f"{data_cfg.name} ({n} pairs)")

    def remove_temp_files(self) -> None:
        """Temp files of writers killed mid-write (a crashed driver or worker). Results: all of
        them, nothing else writes here; the shared cache: those whose writer is gone."""
        remove_stale_temp_files(self.grid.results_dir)
        remove_stale_temp_files(self.grid.cache_dir, older_than_s=SHARED_TEMP_MAX_AGE_S)

    def run(self) -> GridRun:
        self.check_outputs()
        self.check_budgets()  # also prepares every dataset (and its caches) once, up front
        self.remove_temp_files()
        self.store.write_manifest(self.grid.name, self.grid.config_hash, self.hashes)
        todo = self.pending(retire_stale=True)
        if todo:
            self._execute(todo)
            self.remove_temp_files()
        return self

    def results(self) -> GridResults:
        """The grid's current records and why the other cells have none."""
        return self.store.grid_results(self.hashes)

    def _execute(self, todo: list[Cell]) -> None:
        from bench.core.progress import make_progress

        self._bar = make_progress(disable=not self.progress)
        self._task = self._bar.add_task(f"grid {self.grid.name}", total=len(todo),
                                        status=f"{len(self.skipped)} already done")
        with self._bar:
            if self.grid.runner.executor == "local":
                from bench.grid.executors.local import run_local

                run_local(self.grid, todo, self, self.progress)
            else:
                from bench.grid.executors.ray_dispatch import run_ray

                run_ray(self.grid, todo, self, self.plugins)

    # --------------------------------------------------------------- Reporter (bench.grid.executors)
    def started(self, name: str) -> None:
        self._bar.update(self._task, status=name)

    def finished(self, cell: Cell, error: BaseException | None, attempts: int) -> None:
        if error is None:
            self.done.append(cell)
        else:
            self.store.write_failure(cell, failure_record(cell, self.hashes[cell.id], error, attempts))
            self.failed.append(cell)
        self._bar.update(self._task, advance=1, status=f"{cell.id} {'ok' if error is None else 'FAILED'}")
