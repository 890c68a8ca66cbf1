"""Run a grid: every cell (dataset, method, budget, method seed) becomes one task.

The executor is Ray (a local cluster by default, or ``ray_address``) or plain in-process
execution; both call the same :func:`execute_cell`, so there is one definition of what a cell
does. A cell writes its own record atomically when it finishes, so a killed driver loses at
most the cells in flight; re-running skips every cell whose record exists with the same hash.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.config import from_dict, to_dict
from bench.data.datasets import PreparedDataset, prepare_dataset
from bench.env import git_commit, machine_info, pick_device, torch_threads
from bench.evaluate import SeedResult, evaluate_pair_set, summarize
from bench.experts import TrajectoryBuffer, ensure_experts, open_buffer, train_expert
from bench.grid import Cell, GridConfig, RunnerConfig, cell_hash, cell_method_params, plan_cells
from bench.io import remove_stale_temp_files, stable_hash
from bench.measure import measure
from bench.methods_api import MethodContext, MethodOutput
from bench.proxy import ProxyRun, load_or_compute_proxy
from bench.registry import get_method, load_plugins
from bench.store import ResultStore

_PREPARED: dict[str, PreparedDataset] = {}  # per process: Ray reuses workers across tasks


def prepared(grid: GridConfig, name: str, progress: bool = False) -> PreparedDataset:
    cfg = grid.dataset(name)
    key = stable_hash({"dataset": to_dict(cfg), "cache": str(Path(grid.cache_dir).resolve())})
    if key not in _PREPARED:
        _PREPARED[key] = prepare_dataset(cfg, grid.cache_dir, "cpu", progress)
    return _PREPARED[key]


def _proxy(grid: GridConfig, data: PreparedDataset, seed: int, device: torch.device, progress: bool) -> ProxyRun:
    recipe = grid.proxy.train_config(grid.evaluation.full_train)
    return load_or_compute_proxy(data, grid.model, recipe, seed, device, grid.cache_dir, progress)


def _check_output(output: MethodOutput, cell: Cell, kind: str) -> None:
    if not isinstance(output, MethodOutput):
        raise TypeError(f"method {cell.method!r} returned {type(output).__name__}, not MethodOutput")
    if kind != "reference" and len(output.pairs) != cell.budget:
        raise ValueError(f"method {cell.method!r} returned {len(output.pairs)} pairs for budget {cell.budget}")
    if output.soft_targets is not None:  # refuse rather than silently evaluate without them
        raise NotImplementedError(f"method {cell.method!r} returned soft targets; the evaluation does not use them yet")


def _display_captions(data: PreparedDataset, output: MethodOutput, n: int) -> list[str]:
    """Captions to show under the first ``n`` pairs: the real caption of a selected pair, or
    the nearest real training caption of a synthetic text vector (cosine)."""
    captions = data.train.captions
    if output.pairs.source_indices is not None:
        return [captions[int(i)] for i in output.pairs.source_indices[:n]]
    emb = torch.nn.functional.normalize(output.pairs.text_emb[:n].float(), dim=1)
    bank = torch.nn.functional.normalize(data.text_emb["train"].float(), dim=1)
    return [f"≈ {captions[int(i)]}" for i in (emb @ bank.T).argmax(dim=1)]


class _SharedArtifacts:
    """The proxy run and the expert buffer a method declared it uses, made ready (trained or
    loaded from the cache) before the method's timing starts, with what that took."""

    def __init__(self, grid: GridConfig, cls: type, data: PreparedDataset, seed: int,
                 device: torch.device, progress: bool) -> None:
        self.grid, self.data, self.seed, self.device, self.progress = grid, data, seed, device, progress
        self.proxy_seconds: float | None = None
        self.expert_seconds: float | None = None
        self._proxy: ProxyRun | None = None
        self.buffer: TrajectoryBuffer | None = None
        if getattr(cls, "uses_proxy", False):
            start = time.perf_counter()
            self._proxy = self.proxy()
            self.proxy_seconds = time.perf_counter() - start
        if getattr(cls, "uses_experts", False):
            start = time.perf_counter()
            self.buffer = ensure_experts(data, grid.model, grid.experts, grid.evaluation.full_train,
                                         grid.cache_dir, device, progress)
            self.expert_seconds = time.perf_counter() - start

    def proxy(self) -> ProxyRun:
        return self._proxy or _proxy(self.grid, self.data, self.seed, self.device, self.progress)

    def experts(self) -> TrajectoryBuffer:
        g = self.grid
        return self.buffer or open_buffer(self.data, g.model, g.experts, g.evaluation.full_train, g.cache_dir)

    def record(self) -> dict[str, Any]:
        return {
            "proxy_seconds": self.proxy_seconds,
            "expert_seconds": self.expert_seconds,
            "expert_buffer_bytes": None if self.buffer is None else self.buffer.size_bytes(),
            "expert_train_seconds": None if self.buffer is None else self.buffer.train_seconds(),
        }


def _write_pictures(store: ResultStore, cell: Cell, data: PreparedDataset, output: MethodOutput) -> None:
    """The first pairs of the produced set with their captions, and a distillation's loss curve."""
    from bench.reports.plots import plot_matching_loss, save_pair_grid

    n = min(16, len(output.pairs))
    images = output.pairs.images[output.pairs.image_index[:n]]
    save_pair_grid(images, _display_captions(data, output, n), store.picture_path(cell), title=cell.id, n=n)
    if "matching_loss" in output.info:
        plot_matching_loss(output.info["matching_loss"], store.picture_path(cell).with_name(f"{cell.id}_loss.png"),
                           title=f"{cell.id}: matching loss")


def execute_cell(grid: GridConfig, cell: Cell, progress: bool = False) -> dict[str, Any]:
    """Run one cell end to end: method, evaluation, then its set, pictures and record."""
    store = ResultStore(grid.results_dir)
    device = pick_device(grid.device)
    data = prepared(grid, cell.dataset, progress)
    spec = grid.method(cell.method)
    cls = get_method(spec.name)
    method = cls(cell_method_params(grid, cell))
    seed = 0 if cell.method_seed is None else cell.method_seed
    shared = _SharedArtifacts(grid, cls, data, seed, device, progress)
    ctx = MethodContext(data, grid.model, device, Path(grid.cache_dir), shared.proxy, progress, shared.experts)
    budget = cell.budget if cell.budget is not None else data.train.n_captions
    with measure(device) as method_cost:
        output = method.run(ctx, budget, seed)
    _check_output(output, cell, cls.kind)
    train_cfg = grid.evaluation.full_train if cls.kind == "reference" else grid.evaluation.train
    split = grid.evaluation.split
    with measure(device) as eval_cost:
        results: list[SeedResult] = evaluate_pair_set(
            output.pairs, grid.model, train_cfg, data.dataset.split(split), data.text_emb[split],
            grid.evaluation.seeds, device, learned_lrs=output.learned_lrs, progress=progress,
            description=cell.id,
        )
    record = {
        "status": "ok",
        "cell_id": cell.id,
        "cell_hash": cell_hash(grid, cell),
        "dataset": cell.dataset,
        "method": cell.method,
        "method_name": spec.name,
        "method_params": to_dict(method.params),
        "kind": cls.kind,
        "budget": cell.budget,
        "method_seed": cell.method_seed,
        "n_pairs": len(output.pairs),
        "eval_seeds": list(grid.evaluation.seeds),
        "eval_split": split,
        "eval_recipe": to_dict(train_cfg),
        "learned_lrs": output.learned_lrs,
        "per_seed": [r.__dict__ for r in results],
        "summary": summarize(results),
        "method_cost": method_cost.as_dict(),
        "eval_cost": eval_cost.as_dict(),
        **shared.record(),
        "method_info": output.info,
        "source_indices": None if output.source_indices is None else output.source_indices.tolist(),
        "set_file": None,
        "dataset_key": data.dataset.content_key,
        "config": to_dict(grid),
        "config_hash": grid.config_hash,
        "device": str(device),
        "machine": machine_info(),
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if cls.kind != "reference":  # the full set is the training split itself: nothing to save
        record["set_file"] = str(store.save_set(cell, output).relative_to(store.root))
        _write_pictures(store, cell, data, output)
    store.write_record(cell, record)  # last: a record on disk means everything else is there
    return record


def _failure_info(cell: Cell, exc: BaseException, attempts: int) -> dict[str, Any]:
    return {"cell_id": cell.id, "error": f"{type(exc).__name__}: {exc}", "attempts": attempts,
            "traceback": "".join(traceback.format_exception(exc)), "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------- executors

def task_slots(runner: RunnerConfig, resources: dict[str, float]) -> tuple[float, int]:
    """GPUs per task and how many tasks to keep in flight on a cluster with ``resources``."""
    gpus = runner.gpus_per_task
    if gpus is None:
        gpus = 1 if resources.get("GPU", 0) > 0 else 0
    if gpus:
        slots = int(resources.get("GPU", 0) // gpus)
    else:
        slots = int(resources.get("CPU", 1) // runner.cpus_per_task)
    if runner.max_concurrent is not None:
        slots = min(slots, runner.max_concurrent)
    return gpus, max(1, slots)


def _ray_cell(grid_data: dict, cell_data: dict, plugins: list[str], threads: int) -> str:
    """Body of a Ray task (module-level so workers can import it). A retry of a task whose
    worker died after writing the record finds it and does not redo (or rewrite) the cell."""
    torch.set_num_threads(threads)
    load_plugins(plugins)
    grid = from_dict(GridConfig, grid_data)
    cell = Cell(**cell_data)
    if not ResultStore(grid.results_dir).finished(cell, cell_hash(grid, cell)):
        execute_cell(grid, cell)
    return cell_data["dataset"]


def _ray_expert(grid_data: dict, dataset: str, index: int, plugins: list[str], threads: int) -> str:
    torch.set_num_threads(threads)
    grid = from_dict(GridConfig, grid_data)
    data = prepared(grid, dataset)
    path = train_expert(data, grid.model, grid.experts, grid.evaluation.full_train, index,
                        grid.cache_dir, pick_device(grid.device))
    return str(path)


def _ray_proxy(grid_data: dict, dataset: str, seed: int, plugins: list[str], threads: int) -> str:
    torch.set_num_threads(threads)
    load_plugins(plugins)
    grid = from_dict(GridConfig, grid_data)
    _proxy(grid, prepared(grid, dataset), seed, pick_device(grid.device), False)
    return f"{dataset}:{seed}"


def _init_ray(address: str | None) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    # Workers need the driver's import path (plugins outside the repository, a source checkout).
    pythonpath = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    env = {"env_vars": {"PYTHONPATH": pythonpath, "RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}}
    kwargs: dict[str, Any] = {"runtime_env": env, "include_dashboard": False, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)


class GridRun:
    """Plans the cells, skips finished ones, executes the rest, records failures."""

    def __init__(self, grid: GridConfig, plugins: list[str] | None = None, progress: bool = True) -> None:
        self.grid = grid
        self.plugins = list(plugins or [])
        self.progress = progress
        self.store = ResultStore(grid.results_dir)
        self.cells = plan_cells(grid)
        self.done: list[Cell] = []
        self.failed: list[Cell] = []
        self.skipped: list[Cell] = []

    def _method_class(self, cell: Cell) -> type:
        return get_method(self.grid.method(cell.method).name)

    def pending(self) -> list[Cell]:
        todo = [c for c in self.cells if not self.store.finished(c, cell_hash(self.grid, c))]
        self.skipped = [c for c in self.cells if c not in todo]
        return todo

    def check_budgets(self) -> None:
        for data_cfg in self.grid.datasets:
            n = prepared(self.grid, data_cfg.name, self.progress).train.n_captions
            too_big = [b for b in self.grid.budgets if b > n]
            if too_big:
                raise ValueError(f"budget {too_big[0]} is larger than the training set of {data_cfg.name} ({n} pairs)")

    def run(self) -> GridRun:
        load_plugins(self.plugins)
        self.check_budgets()  # also prepares every dataset (and its caches) once, up front
        # Temp files of writers killed mid-write (a crashed driver or worker). Results: all of
        # them, nothing else writes here; the shared cache: only ones no live writer could own.
        remove_stale_temp_files(self.grid.results_dir)
        remove_stale_temp_files(self.grid.cache_dir, older_than_s=3600)
        todo = self.pending()
        if todo:
            if self.grid.runner.executor == "local":
                self._run_local(todo)
            else:
                self._run_ray(todo)
            remove_stale_temp_files(self.grid.results_dir)
        return self

    def _bar(self, total: int):
        from bench.progress import make_progress

        bar = make_progress(disable=not self.progress)
        return bar, bar.add_task(f"grid {self.grid.name}", total=total, status=f"{len(self.skipped)} already done")

    def _run_local(self, todo: list[Cell]) -> None:
        # The same thread count as a Ray task gets, so both executors give identical numbers
        # (reductions in conv kernels may be ordered differently with more threads).
        with torch_threads(self.grid.runner.cpus_per_task):
            self._run_local_cells(todo)

    def _run_local_cells(self, todo: list[Cell]) -> None:
        bar, task = self._bar(len(todo))
        with bar:
            for cell in todo:
                bar.update(task, status=cell.id)
                for attempt in range(1, self.grid.runner.max_retries + 2):
                    try:
                        execute_cell(self.grid, cell, progress=self.progress)
                        self.done.append(cell)
                        break
                    except Exception as exc:  # noqa: BLE001 - recorded, the grid goes on
                        if attempt > self.grid.runner.max_retries:
                            self.store.write_failure(cell, _failure_info(cell, exc, attempt))
                            self.failed.append(cell)
                bar.advance(task)

    def _run_ray(self, todo: list[Cell]) -> None:
        """Ray execution with our own dispatcher: Ray starts queued tasks in no guaranteed
        order, so we keep at most one job per free slot in flight and always start the
        highest-priority job whose inputs are ready: experts, proxies, then the longest cells
        (distillation, the full reference, coresets)."""
        import ray

        _init_ray(self.grid.runner.ray_address)
        runner = self.grid.runner
        gpus, slots = task_slots(runner, ray.cluster_resources())
        # max_retries covers a worker that died (killed, out of memory, node lost) as well as
        # an exception; a retried cell whose record already exists returns at once.
        options = {"num_cpus": runner.cpus_per_task, "num_gpus": gpus, "max_retries": runner.max_retries,
                   "retry_exceptions": True}
        jobs = self._plan_jobs(todo, {name: ray.remote(fn).options(**options) for name, fn in
                                      (("cell", _ray_cell), ("proxy", _ray_proxy), ("expert", _ray_expert))})
        in_flight: dict[Any, _Job] = {}
        bar, task = self._bar(len(todo))
        with bar:
            while any(not job.finished for job in jobs):
                for job in jobs:
                    if len(in_flight) >= slots:
                        break
                    if job.ref is None and not job.finished and all(d.finished for d in job.deps):
                        failed = next((d for d in job.deps if d.error is not None), None)
                        if failed is not None:  # an input could not be made: so neither can this
                            job.fail(RuntimeError(f"{failed.name} failed: {failed.error}"))
                            self._report(job, bar, task, attempts=0)
                        else:
                            job.ref = job.submit()
                            in_flight[job.ref] = job
                if not in_flight:
                    continue
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                job = in_flight.pop(ready[0])
                try:
                    ray.get(ready[0])
                    job.finished = True
                except Exception as exc:  # noqa: BLE001 - the task already used its retries
                    job.fail(exc)
                if job.cell is not None:
                    self._report(job, bar, task, attempts=runner.max_retries + 1)

    def _plan_jobs(self, todo: list[Cell], tasks: dict[str, Any]) -> list[_Job]:
        """Every job of the run, in dispatch priority order, with its inputs."""
        grid_data, runner, plugins = to_dict(self.grid), self.grid.runner, self.plugins
        threads = runner.cpus_per_task
        experts: dict[str, list[_Job]] = {}
        proxies: dict[tuple[str, int], _Job] = {}
        cells: list[_Job] = []
        priority = {"distillation": 0, "reference": 1}
        for cell in sorted(todo, key=lambda c: priority.get(self._method_class(c).kind, 2)):
            cls = self._method_class(cell)
            deps: list[_Job] = []
            if getattr(cls, "uses_experts", False):
                if cell.dataset not in experts:
                    experts[cell.dataset] = [
                        _Job(f"expert {i} of {cell.dataset}",
                             lambda d=cell.dataset, i=i: tasks["expert"].remote(grid_data, d, i, plugins, threads))
                        for i in range(self.grid.experts.n_experts)
                    ]
                deps += experts[cell.dataset]
            key = (cell.dataset, cell.method_seed or 0)
            if getattr(cls, "uses_proxy", False):
                if key not in proxies:
                    proxies[key] = _Job(f"proxy {key[0]} seed {key[1]}",
                                        lambda k=key: tasks["proxy"].remote(grid_data, k[0], k[1], plugins, threads))
                deps.append(proxies[key])
            cells.append(_Job(cell.id, lambda c=cell: tasks["cell"].remote(grid_data, c.__dict__, plugins, threads),
                              deps, cell))
        return [j for group in experts.values() for j in group] + list(proxies.values()) + cells

    def _report(self, job: _Job, bar: Any, task: Any, attempts: int) -> None:
        if job.error is None:
            self.done.append(job.cell)  # type: ignore[arg-type]
        else:
            self.store.write_failure(job.cell, _failure_info(job.cell, job.error, attempts))  # type: ignore[arg-type]
            self.failed.append(job.cell)  # type: ignore[arg-type]
        bar.update(task, advance=1, status=f"{job.name} {'ok' if job.error is None else 'FAILED'}")


class _Job:
    """A Ray task the dispatcher will start once its inputs exist (identity-hashed)."""

    def __init__(self, name: str, submit: Any, deps: list[_Job] | None = None, cell: Cell | None = None) -> None:
        self.name, self.submit, self.deps, self.cell = name, submit, deps or [], cell
        self.ref: Any = None
        self.finished = False
        self.error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        self.finished, self.error = True, exc
