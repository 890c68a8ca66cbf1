"""Running on a Ray cluster the user started elsewhere: relative paths mean the driver's working
directory (never a worker's), a cell reported done whose record is not in the driver's results
directory is an error, and a task no node can fit is refused at once instead of waiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.grid.executors.ray_dispatch import resource_problem
from bench.grid.spec import RunnerConfig, plan_cells
from tests.grid_helpers import RAY_ENV, REPO, TINY_MODEL, tiny_grid

TINY_YAML = f"""
name: ray-tiny
results_dir: results/ray-tiny
cache_dir: results/.cache
datasets:
  - {{source: embedded, embedded: {{n_train_images: 40, n_val_images: 4, n_test_images: 20, resolution: 16}}}}
model: {TINY_MODEL}
evaluation: {{seeds: [0], train: {{epochs: 2, batch_size: 10}}, full_train: {{epochs: 1, batch_size: 64}}}}
proxy: {{epochs: 1, batch_size: 64}}
methods: [random, herding]
budgets: [10]
runner: {{executor: ray, max_retries: 0}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}: {proc.stdout.read()}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the Ray head on port {port} did not answer within {timeout_s} s")


@pytest.fixture
def ray_head(tmp_path):
    """A real ``ray start --head`` whose working directory is not the project's. ``--block``
    keeps it in the foreground, so it is stopped by its own pid (never ``ray stop``, which
    would stop every Ray cluster on the machine); its own ``--temp-dir`` keeps other runs on
    this machine from joining it."""
    head_dir = tmp_path / "head"
    head_dir.mkdir()
    port = _free_port()
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [str(ray), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir=/tmp/ray-test-{port}", "--block"],
        cwd=head_dir, env=RAY_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        _wait_for_port(port, proc, 120)
        yield f"127.0.0.1:{port}", head_dir
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.timeout(600)
def test_relative_results_dir_on_a_cluster_started_elsewhere_lands_in_the_drivers_directory(tmp_path, ray_head):
    address, head_dir = ray_head
    project = tmp_path / "project"
    project.mkdir()
    (project / "tiny.yaml").write_text(TINY_YAML)
    run = subprocess.run(
        [sys.executable, str(REPO / "run_bench.py"), "--no-progress", "--config", "tiny.yaml",
         "--ray-address", address, "--set", "results_dir=results/ray-tiny"],
        cwd=project, env=RAY_ENV, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-3000:]
    records = sorted(p.name for p in (project / "results/ray-tiny/records").glob("*.json"))
    assert records == ["embedded__full.json", "embedded__herding__b10__s0.json", "embedded__random__b10__s0.json"]
    assert (project / "results/.cache").is_dir()
    # Nothing was written relative to the workers' own working directory.
    assert not list(head_dir.rglob("records")) and not list(head_dir.rglob(".cache"))
    assert "3 cells run" in run.stdout


def test_a_cell_reported_done_without_its_record_here_is_an_error_naming_where_it_went(tmp_path):
    from bench.core.progress import make_progress
    from bench.grid.runner import GridRun

    grid = tiny_grid(tmp_path)
    run = GridRun(grid, progress=False)
    run._bar = make_progress(disable=True)
    run._task = run._bar.add_task("grid", total=1)
    cell = plan_cells(grid)[1]
    run.finished(cell, None, 1, f"node-7:/elsewhere/results/records/{cell.id}.json")
    assert run.done == [] and [c for c, _ in run.lost] == [cell]
    message = run.lost_message()
    assert "1 cell(s) finished" in message and "/elsewhere/results/records" in message and "node-7" in message
    assert str(tmp_path / "results" / "records") in message and "\n" not in message


def test_no_node_fits_a_task_names_the_set_that_fixes_it():
    two_cpus = [{"CPU": 2.0}]
    assert resource_problem(RunnerConfig(cpus_per_task=2), two_cpus) is None
    problem = resource_problem(RunnerConfig(cpus_per_task=4), two_cpus)
    assert "--set runner.cpus_per_task=2" in problem and "no node" in problem
    # The largest node counts, not the total: two 2-CPU nodes cannot run a 4-CPU task.
    assert "cpus_per_task=2" in resource_problem(RunnerConfig(cpus_per_task=4), two_cpus * 2)
    assert "--set runner.gpus_per_task=0" in resource_problem(RunnerConfig(gpus_per_task=1), two_cpus)
    gpu_node, cpu_node = {"CPU": 1.0, "GPU": 1.0}, {"CPU": 8.0}
    assert resource_problem(RunnerConfig(cpus_per_task=1, gpus_per_task=1), [gpu_node, cpu_node]) is None
    both = resource_problem(RunnerConfig(cpus_per_task=4, gpus_per_task=1), [gpu_node, cpu_node])
    assert "no node has both" in both and "cpus_per_task=1" in both


@pytest.mark.timeout(300)
def test_a_task_too_large_for_this_machine_is_refused_before_any_compute(tmp_path):
    cpus = len(os.sched_getaffinity(0))
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(REPO / "run_bench.py"), "--no-progress", "--config", "tiny.yaml",
         "--set", f"runner.cpus_per_task={cpus + 2}"],
        cwd=tmp_path, env=RAY_ENV, capture_output=True, text=True, timeout=240)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--set runner.cpus_per_task={cpus}" in lines[0]
    assert not (tmp_path / "results/.cache").exists() or not any((tmp_path / "results/.cache").iterdir())
    assert time.monotonic() - start < 200
