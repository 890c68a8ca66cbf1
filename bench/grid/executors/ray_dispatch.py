"""The Ray executor: one task per expert, proxy and cell, started by our own dispatcher.

Ray starts queued tasks in no guaranteed order, so the driver keeps at most one job per free
slot in flight and always starts the highest-priority job whose inputs are ready: experts,
proxies, then the longest cells (distillation, the full reference, coresets). A job whose
input failed is reported failed without being started. Task bodies are module-level functions
(workers import them by name); their names show in a worker's process title
(``ray::_ray_cell``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.core.config import from_dict, to_dict
from bench.core.env import pick_device
from bench.core.errors import UserError, console_warnings_setup, error_text
from bench.distill.experts import train_expert
from bench.grid import cell as cell_module
from bench.grid.executors import Reporter, timeout_error
from bench.grid.spec import Cell, GridConfig, RunnerConfig, cell_hash, resolve_cell
from bench.grid.store import ResultStore
from bench.registry import load_plugins

#: Start order of ready cells: lower first (proxies, then experts, come before any cell).
_CELL_PRIORITY = {"distillation": 0, "reference": 1}


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


def resource_problem(runner: RunnerConfig, nodes: list[dict[str, float]]) -> str | None:
    """Why no task of the grid can ever start on a cluster whose nodes have ``nodes`` resources
    (Ray would queue it for ever, printing autoscaler warnings), with the ``--set`` that fixes
    it; None when some node fits a task. A task runs on one node, so the largest node counts,
    not the cluster's total."""
    if not nodes:
        return "the Ray cluster has no live node"
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    gpus, _ = task_slots(runner, {"GPU": total_gpus})
    cpus = runner.cpus_per_task
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return None
    most_cpus = max(n.get("CPU", 0) for n in nodes)
    most_gpus = max(n.get("GPU", 0) for n in nodes)
    if cpus > most_cpus:
        return (f"runner.cpus_per_task is {cpus}, but no node of the Ray cluster has more than {most_cpus:g} CPUs, "
                f"so no task could ever start; --set runner.cpus_per_task={max(1, int(most_cpus))}")
    if gpus > most_gpus:
        fix = f"{most_gpus:g}" if most_gpus else "0"
        return (f"runner.gpus_per_task is {gpus:g}, but no node of the Ray cluster has more than {most_gpus:g} GPUs, "
                f"so no task could ever start; --set runner.gpus_per_task={fix}")
    fitting = max((n.get("CPU", 0) for n in nodes if n.get("GPU", 0) >= gpus), default=0)
    return (f"runner.cpus_per_task is {cpus} with {gpus:g} GPU(s) per task, but no node has both (the nodes with "
            f"{gpus:g} GPUs have at most {fitting:g} CPUs); --set runner.cpus_per_task={max(1, int(fitting))}")


def local_cluster_problem(runner: RunnerConfig) -> str | None:
    """:func:`resource_problem` for the local cluster a run without ``ray_address`` starts
    (one node: this machine's CPUs and GPUs), checked before any data is prepared."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return resource_problem(runner, [{"CPU": float(cpus), "GPU": float(gpus)}])


def check_cluster_resources(runner: RunnerConfig) -> None:
    """The joined (or started) cluster can run the grid's tasks (:func:`resource_problem`)."""
    import ray

    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    problem = resource_problem(runner, nodes)
    if problem:
        raise RayClusterError(problem)


def _worker_setup(threads: int) -> None:
    """What every task sets first: its torch threads, warnings as one line each (once)."""
    torch.set_num_threads(threads)
    console_warnings_setup()


def _ray_cell(grid_data: dict, cell_data: dict, plugins: list[str], threads: int) -> str:
    """A cell; returns where its record is (``host:/absolute/path``), which the driver checks
    against its own results directory. A retry of a task whose worker died after writing the
    record finds it and does not redo (or rewrite) the cell."""
    _worker_setup(threads)
    load_plugins(plugins)
    grid = from_dict(GridConfig, grid_data)
    cell = Cell(**cell_data)
    store = ResultStore(grid.results_dir)
    if not store.finished(cell, cell_hash(grid, cell)):
        cell_module.execute_cell(grid, cell)
    return f"{socket.gethostname()}:{os.path.abspath(store.record_path(cell))}"


def _ray_expert(grid_data: dict, dataset: str, index: int, threads: int) -> str:
    """Expert ``index`` of ``dataset`` (skipped when its file is on disk and valid)."""
    _worker_setup(threads)
    grid = from_dict(GridConfig, grid_data)
    data = cell_module.prepared(grid, dataset)
    path = train_expert(data, grid.model, grid.experts, grid.evaluation.full_train, index,
                        grid.cache_dir, pick_device(grid.device))
    return str(path)


def _ray_proxy(grid_data: dict, dataset: str, seed: int, plugins: list[str], threads: int) -> str:
    """The proxy run of ``dataset`` for method seed ``seed`` (plugins may replace the proxy)."""
    _worker_setup(threads)
    load_plugins(plugins)
    grid = from_dict(GridConfig, grid_data)
    cell_module.load_proxy(grid, cell_module.prepared(grid, dataset), seed, pick_device(grid.device), False)
    return f"{dataset}:{seed}"


class RayClusterError(UserError, ConnectionError):
    """The Ray cluster the grid should join cannot be reached (the message names the address)."""


#: How long joining a cluster may take to answer before the run is refused.
CONNECT_TIMEOUT_S = 10.0


def check_ray_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A cluster address ``[ray://]HOST:PORT`` must accept a connection within ``timeout_s``:
    ``ray.init`` itself retries an unreachable address without end. ``auto`` and ``local``
    are Ray's own lookups and pass unchecked."""
    target = address.removeprefix("ray://")
    if target in ("auto", "local"):
        return
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayClusterError(f"ray address {address!r} must look like HOST:PORT (e.g. 10.0.0.1:6379), "
                              "ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RayClusterError(f"cannot reach the Ray cluster at {address}: {reason} (waited up to "
                              f"{timeout_s:g} s); start it (`ray start --head`) or fix --ray-address") from None


#: Ray's own console chatter, off unless the user's environment says otherwise: the driver's
#: INFO log lines (``Started a local Ray instance.``) and the autoscaler's event lines, which a
#: log file would interleave with the suite's; :func:`init_ray` prints one line of its own
#: instead. Worker output (warnings, tracebacks) still reaches the driver (``log_to_driver``).
#: Set when this module is imported: Ray reads ``RAY_SCHEDULER_EVENTS`` once, when imported.
QUIET_RAY = {"RAY_SCHEDULER_EVENTS": "0"}
for _name, _value in QUIET_RAY.items():
    os.environ.setdefault(_name, _value)


def cluster_line(address: str | None, resources: dict[str, float], nodes: int) -> str:
    """The suite's one line about the cluster a run uses (in place of Ray's INFO lines)."""
    size = f"{resources.get('CPU', 0):g} CPUs" + (f", {resources['GPU']:g} GPUs" if resources.get("GPU") else "")
    if not address:
        return f"ray: started a local cluster with {size}"
    return f"ray: joined the cluster at {address} ({nodes} node{'s' if nodes != 1 else ''}, {size})"


def init_ray(address: str | None) -> None:
    """Join ``address`` or start a local cluster (once per process), quietly: one line says
    which (:func:`cluster_line`). Without an address Ray would join the last cluster a ``ray
    start`` left on this machine (``/tmp/ray``), another user's included; ``address="local"``
    always starts our own."""
    import logging

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    # Workers need the driver's import path (plugins outside the repository, a source checkout).
    pythonpath = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    env = {"env_vars": {"PYTHONPATH": pythonpath, "RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}}
    kwargs: dict[str, Any] = {"runtime_env": env, "include_dashboard": False, "log_to_driver": True,
                              "logging_level": logging.WARNING}
    if address:
        check_ray_address(address)
        ray.init(address=address, **kwargs)
    else:  # a new cluster of our own: never join one that someone started on this machine
        ray.init(address="local", **kwargs)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    print(cluster_line(address, ray.cluster_resources(), nodes), flush=True)


class _Job:
    """A Ray task the dispatcher will start once its inputs exist (identity-hashed)."""

    def __init__(self, name: str, submit: Callable[[], Any], deps: list[_Job] | None = None,
                 cell: Cell | None = None) -> None:
        self.name, self.submit, self.deps, self.cell = name, submit, deps or [], cell
        self.ref: Any = None
        self.started_at = 0.0
        self.finished = False
        self.error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        self.finished, self.error = True, exc


def _plan_jobs(grid: GridConfig, todo: list[Cell], plugins: list[str], tasks: dict[str, Any]) -> list[_Job]:
    """Every job of the run, in dispatch priority order, with its inputs.

    Proxies go before experts: a proxy is one long task (40 epochs over the pool, where an
    expert is 5), and started last it ran alone after the experts while the other slots idled
    or ran cells; started first it runs beside them (longest job first), which ends the
    one-time work sooner. The order changes no result: each task's output depends on its
    inputs and its thread count only."""
    grid_data, threads = to_dict(grid), grid.runner.cpus_per_task
    experts: dict[str, list[_Job]] = {}
    proxies: dict[tuple[str, int], _Job] = {}
    cells: list[_Job] = []

    classes = {c.id: resolve_cell(grid, c).method_cls for c in todo}
    for cell in sorted(todo, key=lambda c: _CELL_PRIORITY.get(classes[c.id].kind, 2)):
        cls = classes[cell.id]
        deps: list[_Job] = []
        if cls.uses_experts:
            if cell.dataset not in experts:
                experts[cell.dataset] = [
                    _Job(f"expert {i} of {cell.dataset}",
                         lambda d=cell.dataset, i=i: tasks["expert"].remote(grid_data, d, i, threads))
                    for i in range(grid.experts.n_experts)
                ]
            deps += experts[cell.dataset]
        key = (cell.dataset, cell.method_seed or 0)
        if cls.uses_proxy:
            if key not in proxies:
                proxies[key] = _Job(f"proxy {key[0]} seed {key[1]}",
                                    lambda k=key: tasks["proxy"].remote(grid_data, k[0], k[1], plugins, threads))
            deps.append(proxies[key])
        cells.append(_Job(cell.id, lambda c=cell: tasks["cell"].remote(grid_data, c.__dict__, plugins, threads),
                          deps, cell))
    return list(proxies.values()) + [j for group in experts.values() for j in group] + cells


def run_ray(grid: GridConfig, todo: list[Cell], reporter: Reporter, plugins: list[str]) -> None:
    """Run ``todo`` on a Ray cluster (a local one unless ``runner.ray_address``)."""
    import ray

    init_ray(grid.runner.ray_address)
    runner = grid.runner
    check_cluster_resources(runner)  # before any task is sent: one that never fits waits for ever
    gpus, slots = task_slots(runner, ray.cluster_resources())
    # max_retries covers a worker that died (killed, out of memory, node lost) as well as
    # an exception; a retried cell whose record already exists returns at once.
    options = {"num_cpus": runner.cpus_per_task, "num_gpus": gpus, "max_retries": runner.max_retries,
               "retry_exceptions": True}
    tasks = {name: ray.remote(fn).options(**options)
             for name, fn in (("cell", _ray_cell), ("proxy", _ray_proxy), ("expert", _ray_expert))}
    jobs = _plan_jobs(grid, todo, plugins, tasks)
    in_flight: dict[Any, _Job] = {}
    while any(not job.finished for job in jobs):
        for job in jobs:
            if len(in_flight) >= slots:
                break
            if job.ref is None and not job.finished and all(d.finished for d in job.deps):
                failed = next((d for d in job.deps if d.error is not None), None)
                if failed is not None:  # an input could not be made: so neither can this
                    job.fail(RuntimeError(f"{failed.name} failed: {error_text(failed.error)}"))
                    reporter.finished(job.cell, job.error, 0)  # type: ignore[arg-type]
                else:
                    reporter.started(job.name)
                    job.ref = job.submit()
                    job.started_at = time.monotonic()
                    in_flight[job.ref] = job
        if not in_flight:
            continue
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_next_deadline(in_flight, runner))
        if not ready:
            _stop_overdue(ray, in_flight, runner, reporter)
            continue
        job = in_flight.pop(ready[0])
        written_to = None
        try:
            written_to = ray.get(ready[0])
            job.finished = True
        except Exception as exc:  # noqa: BLE001 - the task already used its retries
            job.fail(exc)
        if job.cell is None:  # an expert or a proxy (a cell is reported as finished)
            reporter.ended(job.name, job.error)
        if job.cell is not None:
            reporter.finished(job.cell, job.error, runner.max_retries + 1, written_to)


def _next_deadline(in_flight: dict[Any, _Job], runner: RunnerConfig) -> float | None:
    """Seconds until the first cell in flight runs out of ``cell_timeout_s`` (None: no limit)."""
    limit = runner.cell_timeout_s
    starts = [job.started_at for job in in_flight.values() if job.cell is not None]
    if limit is None or not starts:
        return None
    return max(0.0, min(starts) + limit - time.monotonic())


def _stop_overdue(ray: Any, in_flight: dict[Any, _Job], runner: RunnerConfig, reporter: Reporter) -> None:
    """Cancel every cell task past ``cell_timeout_s`` (its worker process is killed, so a method
    stuck anywhere, even inside a C call, stops) and report it failed; not retried."""
    limit = runner.cell_timeout_s
    now = time.monotonic()
    for ref, job in list(in_flight.items()):
        if job.cell is not None and limit is not None and now - job.started_at >= limit:
            ray.cancel(ref, force=True)
            del in_flight[ref]
            job.fail(timeout_error(limit))
            reporter.finished(job.cell, job.error, 1)
