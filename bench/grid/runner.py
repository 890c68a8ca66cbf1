"""Run a grid: plan its cells, check the run can succeed, execute what is pending, record.

Where things live:
  bench/grid/cell.py                    one cell: prepare its inputs, run the method, evaluate, record
  bench/grid/executors/local.py         cells one after another in this process
  bench/grid/executors/ray_dispatch.py  one Ray task per expert / proxy / cell, dispatched by priority
  bench/grid/store.py                   the results directory (records, failures, grid.json)

:class:`GridRun` does what happens once per run, in the driver: validate the output and cache
directories before any compute, check every dataset's files and every budget against its size
(from the annotations, before any image is decoded), prepare every dataset, write
``grid.json`` (the cells and hashes the reports will show), move the records of an older
recipe of a planned cell aside, skip finished cells, hand the rest to an executor and write a
failure record for every cell that failed. A cell writes its own record, so a killed driver
loses at most the cells in flight; re-running skips every cell whose record has the same hash
and whose set file is as it was written. One run at a time owns a results directory (its
``.lock``); a full disk stops the run with one line that says how to resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.core.config import ConfigError
from bench.core.errors import error_text
from bench.core.io import (
    SHARED_TEMP_MAX_AGE_S,
    DiskFullError,
    check_writable_dir,
    directory_lock,
    is_disk_full,
    remove_stale_temp_files,
)
from bench.data.datasets import check_dataset_files
from bench.core.progress import TaskLines, interactive
from bench.grid.cell import failure_record, prepared
from bench.grid.executors import Reporter
from bench.grid.record import RecordError
from bench.grid.spec import Cell, GridConfig, grid_models, plan_cells, resolve_cell
from bench.grid.store import GridResults, ResultStore
from bench.registry import load_plugins


class GridRun:
    """Plans the cells, skips finished ones, executes the rest, records failures."""

    def __init__(self, grid: GridConfig, plugins: list[str] | None = None, progress: bool = True) -> None:
        self.grid = grid
        self.plugins = list(plugins or [])
        # Bars only for a terminal; a log file gets a line per task instead (LineReporter).
        self.progress = progress and interactive()
        self.store = ResultStore(grid.results_dir)
        self.cells = plan_cells(grid)
        load_plugins(self.plugins)  # a plugin method's class enters its cells' hashes
        self.hashes = {c.id: resolve_cell(grid, c).hash for c in self.cells}
        self.done: list[Cell] = []
        self.failed: list[Cell] = []
        self.skipped: list[Cell] = []
        self.retired: list[str] = []
        #: Cells an executor reported done whose record is not in this results directory, with
        #: where the worker says it wrote it.
        self.lost: list[tuple[Cell, str]] = []
        self.earlier_datasets: list[str] = []
        self._lock_depth = 0
        self._bar: Any = None
        self._task: Any = None

    def use_grid(self, grid: GridConfig) -> None:
        """Run ``grid`` instead (same results directory): the grid a tuning phase chose."""
        if grid.results_dir != self.grid.results_dir:
            raise ValueError("use_grid keeps the results directory")
        self.grid = grid
        self.cells = plan_cells(grid)
        self.hashes = {c.id: resolve_cell(grid, c).hash for c in self.cells}

    def pending(self, retire_stale: bool = False) -> list[Cell]:
        """The cells without a finished record of this recipe (each record read once); the
        others are ``skipped``. A record whose set file is gone or changed is not finished.
        ``retire_stale``: move aside the record of a planned cell made by another recipe (or
        whose set file is damaged), so a cell that now fails (or is not reached) never shows
        its old number."""
        todo, self.skipped = [], []
        for cell in self.cells:
            record = self.store.read_record(cell)
            if (record is not None and record.cell_hash == self.hashes[cell.id]
                    and self.store.set_problem(record) is None):
                self.skipped.append(cell)
                continue
            if record is not None and retire_stale:
                self.store.retire(cell, record.cell_hash)
                self.retired.append(cell.id)
            todo.append(cell)
        return todo

    #: The folders of a results directory a run writes into (checked up front when they exist).
    RESULT_FOLDERS = ("records", "sets", "pictures", "stale", "tables", "plots")

    def check_outputs(self) -> None:
        """The results and cache directories take files (exist or can be made, are writable,
        have room), and so does every folder of the results directory that exists already
        (a read-only ``records/`` would fail when the first record is retired or written),
        checked before any work so a bad path costs nothing. A Ray cluster to join must answer,
        and some node of it (or of the local cluster a run starts) must fit a task's CPUs and GPUs."""
        root = Path(self.grid.results_dir)
        check_writable_dir(root, "results_dir")
        for folder in self.RESULT_FOLDERS:
            if (root / folder).exists() or (root / folder).is_symlink():  # a file named `records` too
                check_writable_dir(root / folder, f"results_dir folder {folder}/:")
        check_writable_dir(self.grid.cache_dir, "cache_dir")
        if self.grid.runner.executor == "ray":
            from bench.grid.executors import ray_dispatch

            if self.grid.runner.ray_address:  # join now: its resources decide before any compute
                ray_dispatch.check_ray_address(self.grid.runner.ray_address)
                ray_dispatch.init_ray(self.grid.runner.ray_address)
                ray_dispatch.check_cluster_resources(self.grid.runner)
            else:  # the local cluster is started only if a cell is to compute
                problem = ray_dispatch.local_cluster_problem(self.grid.runner)
                if problem:
                    raise ConfigError(problem)

    def check_model_files(self) -> None:
        """Every image tower's weights file or model directory (the grid model's and each
        evaluation student's) exists and is one (its header is read), before any data is
        prepared; a cluster's workers may see other files than the driver, so a grid joining
        one is not judged here."""
        from bench.models.image_encoders import encoder_files_problem

        if self.grid.runner.executor == "ray" and self.grid.runner.ray_address:
            return
        for key, model in grid_models(self.grid).items():
            problem = encoder_files_problem(model.image_encoder)
            if problem:
                raise ConfigError(f"{key}.{problem}")

    def check_budgets(self) -> None:
        """Every dataset's files are there and every budget fits its training set, judged from
        the annotations, ``stat`` and the config alone (:func:`bench.data.datasets.check_dataset_files`):
        no image is decoded and no model loaded before every dataset passed."""
        for data_cfg in self.grid.datasets:
            n = check_dataset_files(data_cfg)
            too_big = [b for b in self.grid.budgets if b > n]
            if too_big:
                raise ConfigError(f"budgets: budget {too_big[0]} is larger than the training set of "
                                  f"{data_cfg.name} ({n} pairs)")

    def prepare_datasets(self) -> None:
        """Decode (or map from the cache) and embed every dataset once, in the driver; then
        every method's parameters must be able to produce each of its budgets from it
        (``Method.budget_problem``: e.g. clip-score's per-image cap, ccs's pruned fraction),
        before any cell runs."""
        lines = None if self.progress else TaskLines()  # decoding and embedding may take minutes
        for data_cfg in self.grid.datasets:
            if lines:
                lines.start(f"prepare dataset {data_cfg.name}")
            data = prepared(self.grid, data_cfg.name, self.progress)
            if lines:
                lines.end(f"prepare dataset {data_cfg.name}")
            for i, spec in enumerate(self.grid.methods):
                for budget in spec.budgets_of(self.grid.budgets):
                    resolved = resolve_cell(self.grid, Cell(data_cfg.name, spec.key, budget, self.grid.method_seeds[0]))
                    problem = resolved.method_cls.budget_problem(resolved.params, budget, data)
                    if problem:
                        where = "params" if budget not in spec.budget_params else f"budget_params.{budget}"
                        raise ConfigError(f"methods[{i}] ({spec.key}).{where} on {data_cfg.name}: {problem}")

    def remove_temp_files(self) -> None:
        """Temp files of writers killed mid-write (a crashed driver or worker): those whose
        writer is gone, and any an hour old, in the results and the cache directory alike (a
        live writer of another host or process keeps its file)."""
        for root in (self.grid.results_dir, self.grid.cache_dir):
            remove_stale_temp_files(root, older_than_s=SHARED_TEMP_MAX_AGE_S)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Own the results directory (``results_dir/.lock``) for the duration, after checking
        the output directories; a second run into it is refused with the holder's host and
        pid. Re-entrant: the command line holds it over the run and the reports it writes,
        :meth:`run` holds it in any case."""
        if not self._lock_depth:
            self.check_outputs()
        self._lock_depth += 1
        try:
            with directory_lock(self.grid.results_dir, "results_dir"):
                yield
        finally:
            self._lock_depth -= 1

    def note_earlier_grid(self) -> None:
        """Remember the datasets of the grid that ran here before (``grid.json``) that this
        grid lacks: their tables and plots are no longer current (``earlier_datasets``)."""
        try:
            manifest = self.store.read_manifest()
        except RecordError:  # an unreadable grid.json is replaced below
            manifest = None
        ours = {d.name for d in self.grid.datasets}
        earlier = dict.fromkeys(cell_id.split("__")[0] for cell_id in (manifest.cells if manifest else {}))
        self.earlier_datasets = [d for d in earlier if d not in ours]

    def run(self) -> GridRun:
        with self.locked():
            self.check_model_files()
            self.check_budgets()  # before any image is decoded
            self.prepare_datasets()  # every dataset (and its caches) once, up front
            self.remove_temp_files()
            self.note_earlier_grid()
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
        reporter: Reporter = self if self.progress else LineReporter(self, len(todo))
        with self._bar:
            if self.grid.runner.executor == "local":
                from bench.grid.executors.local import run_local

                run_local(self.grid, todo, reporter, self.progress)
            else:
                from bench.grid.executors.ray_dispatch import run_ray

                run_ray(self.grid, todo, reporter, self.plugins)

    # --------------------------------------------------------------- Reporter (bench.grid.executors)
    def started(self, name: str) -> None:
        self._bar.update(self._task, status=name)

    def ended(self, name: str, error: BaseException | None) -> None:
        self._bar.update(self._task, status=f"{name} {'ok' if error is None else 'FAILED'}")

    def finished(self, cell: Cell, error: BaseException | None, attempts: int, written_to: str | None = None) -> None:
        if error is not None and is_disk_full(error):
            self.stop_for_full_disk(cell, error)
        if error is None and not self.store.finished(cell, self.hashes[cell.id]):
            # Done, says the executor, but not here: a worker wrote into another directory.
            self.lost.append((cell, written_to or "an unknown place"))
        elif error is None:
            self.done.append(cell)
        else:
            try:
                self.store.write_failure(cell, failure_record(cell, self.hashes[cell.id], error, attempts))
            except DiskFullError as exc:
                self.stop_for_full_disk(cell, exc)
            self.failed.append(cell)
        self._bar.update(self._task, advance=1, status=f"{cell.id} {'ok' if error is None else 'FAILED'}")

    def lost_message(self) -> str | None:
        """One line on the cells reported done whose records this results directory lacks (the
        workers wrote elsewhere: another working directory, a node that does not share the
        disk), or None when there are none."""
        if not self.lost:
            return None
        places = sorted({str(Path(where.split(":", 1)[-1]).parent) if ":" in where else where
                         for _, where in self.lost})
        hosts = sorted({where.split(":", 1)[0] for _, where in self.lost if ":" in where})
        on = f" on {', '.join(hosts)}" if hosts else ""
        return (f"{len(self.lost)} cell(s) finished but their records are not in {self.store.root / 'records'}: "
                f"the workers wrote them to {', '.join(places)}{on}; give results_dir and cache_dir on a "
                "filesystem every Ray node shares (the same absolute path everywhere) and rerun")

    def stop_for_full_disk(self, cell: Cell, error: BaseException) -> None:
        """End the run: every further cell would fail the same way. What finished is kept (a
        record is written last and atomically), so a rerun after freeing space resumes."""
        kept = len(self.done) + len(self.skipped)
        raise DiskFullError(
            f"the disk is full: cell {cell.id} failed ({error_text(error).split(': ', 1)[-1]}); "
            f"{kept} finished cell(s) are kept in {self.grid.results_dir}; free some space and rerun "
            "the same command to resume") from error


class LineReporter:
    """The reporter of a run without progress bars (stdout is a log file, or ``--no-progress``):
    one flushed line per job started and ended, with its time (:class:`TaskLines`), and
    everything passed on to the grid run."""

    def __init__(self, run: GridRun, total: int) -> None:
        self.run, self.total, self.count = run, total, 0
        self.lines = TaskLines()

    def _label(self, name: str) -> str:
        return f"cell {name}" if name in self.run.hashes else name

    def started(self, name: str) -> None:
        self.lines.start(self._label(name))
        self.run.started(name)

    def ended(self, name: str, error: BaseException | None) -> None:
        self.run.ended(name, error)
        self.lines.end(name, None if error is None else error_text(error))

    def finished(self, cell: Cell, error: BaseException | None, attempts: int, *args: Any, **kwargs: Any) -> None:
        self.run.finished(cell, error, attempts, *args, **kwargs)
        self.count += 1
        problem = None if error is None else error_text(error)
        if problem is None and cell not in self.run.done:
            problem = f"its record is not in {self.run.store.root / 'records'}"
        self.lines.end(self._label(cell.id), problem, f"  [{self.count}/{self.total}]")
