"""Faults under Ray: worker processes killed mid-grid (an expert's, and cells' including a
distillation with a checkpoint) are retried,
and the grid ends with the same records as an undisturbed run: none lost, none duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.grid_helpers import RAY_ENV, cli_args, metrics, records, write_plugin

#: A grid with experts and a checkpointed distillation cell besides coresets (5 cells with the full reference).
FAULT_GRID = {
    "methods": "[random, kcenter, first-k, {name: distill-joint, params: {iterations: 12, syn_steps: 2, "
               "max_start_epoch: 1, checkpoint_every: 3, batch_syn: 5}}]",
    "budgets": "[10]",
    "experts.n_experts": 2, "experts.epochs": 2, "experts.batch_size": 32,
    "runner.max_retries": 2,
}


def _running_tasks(driver: psutil.Process, function: str) -> list[psutil.Process]:
    """Ray workers of this driver's cluster now executing ``function`` (Ray sets a worker's
    process title to ``ray::<function>`` while it runs a task)."""
    found = []
    for proc in driver.children(recursive=True):
        try:
            if proc.cmdline()[:1] == [f"ray::{function}"]:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _kill_when(driver: psutil.Process, function: str, ready, deadline: float) -> list[int]:
    """SIGKILL every worker running ``function`` as soon as ``ready()`` holds and one runs."""
    while time.time() < deadline and driver.is_running():
        victims = _running_tasks(driver, function) if ready() else []
        killed = []
        for victim in victims:
            try:
                victim.send_signal(signal.SIGKILL)
                killed.append(victim.pid)
            except psutil.NoSuchProcess:
                continue
        if killed:
            return killed
        time.sleep(0.05)
    return []


@pytest.mark.timeout(900)
def test_killed_workers_are_retried_and_results_match_an_undisturbed_run(tmp_path):
    plugin = write_plugin(tmp_path)
    reference = tmp_path / "reference"
    subprocess.run(cli_args(tmp_path / "ref", reference, plugin, "local", **FAULT_GRID),
                   check=True, cwd=tmp_path, capture_output=True)
    expected = records(reference)
    assert len(expected) == 5

    results = tmp_path / "ray"
    log = (tmp_path / "ray.log").open("w")
    proc = subprocess.Popen(cli_args(tmp_path / "run", results, plugin, "ray", **FAULT_GRID), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, env=RAY_ENV, start_new_session=True)
    try:
        driver = psutil.Process(proc.pid)
        deadline = time.time() + 600
        # An expert mid-training, then every cell in flight once the distillation cell has
        # written a checkpoint (so its retry resumes from it).
        killed_expert = _kill_when(driver, "_ray_expert", lambda: True, deadline)
        checkpoints = tmp_path / "run" / "cache" / "distill"
        killed_cells = _kill_when(driver, "_ray_cell", lambda: any(checkpoints.glob("*.pt")), deadline)
        rc = proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    whole = (tmp_path / "ray.log").read_text()
    output = whole[-4000:]  # what a failure shows; the retries are counted over the whole log
    assert killed_expert and killed_cells, f"no worker was killed\n{output}"
    assert whole.count("will be retried") >= 1 + len(killed_cells), output
    assert rc == 0, output

    final = records(results)
    assert set(final) == set(expected), output  # no record lost
    assert metrics(final) == metrics(expected)  # identical to the undisturbed (local) run
    record_files = sorted(p.name for p in (results / "records").iterdir())
    assert record_files == sorted(f"{k}.json" for k in expected)  # no failure files, no duplicates
    assert not [p for p in tmp_path.rglob(".*.tmp")], "a temp file of a killed writer was left behind"


BROKEN_PROXY_PLUGIN = '''
"""Loaded into every task: makes every proxy model fail to train (an input that cannot be made)."""
import bench.grid.cell


def _broken_proxy(*args, **kwargs):
    raise RuntimeError("proxy training broke (test plugin)")


bench.grid.cell.load_proxy = _broken_proxy
'''

MISBEHAVING_PLUGIN = '''
"""A method that raises (its message must reach the failure record) and one that hangs."""
import time

from bench.methods_api import Method
from bench.registry import register


@register("boom", "coreset", "raises (a test plugin)")
class Boom(Method):
    def run(self, ctx, budget, seed):
        raise RuntimeError("boom from the method itself")


@register("sleepy", "coreset", "hangs (a test plugin)")
class Sleepy(Method):
    def run(self, ctx, budget, seed):
        time.sleep(3600)
'''


@pytest.mark.timeout(600)
def test_cells_whose_input_failed_are_reported_and_the_rest_finish(tmp_path):
    """A proxy that cannot be trained fails the coreset cells that need it (with the cause,
    without running them); cells that do not need it still finish. Issue 20: a method's
    exception is recorded with its own message, without Ray's wrapper or terminal codes (item
    17), and a cell past ``runner.cell_timeout_s`` is stopped and recorded (item 20)."""
    plugins = [write_plugin(tmp_path), tmp_path / "broken_proxy.py", tmp_path / "misbehaving.py"]
    plugins[1].write_text(BROKEN_PROXY_PLUGIN)
    plugins[2].write_text(MISBEHAVING_PLUGIN)
    results = tmp_path / "results"
    args = cli_args(tmp_path, results, plugins[0], "ray", budgets="[10]", methods="[random, kcenter, first-k, boom, sleepy]",
                    **{"runner.max_retries": 0, "runner.cell_timeout_s": 45})
    args += ["--plugin", str(plugins[1]), "--plugin", str(plugins[2])]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=RAY_ENV)
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 1, output  # some cells failed
    assert set(records(results)) == {"embedded__full", "embedded__random__b10__s0", "embedded__first-k__b10__s0"}
    failure = json.loads((results / "records" / "embedded__kcenter__b10__s0.failed.json").read_text())
    assert failure["status"] == "failed" and failure["attempts"] == 0  # never started
    assert "proxy embedded seed 0 failed" in failure["error"] and "proxy training broke" in failure["error"]
    boom = json.loads((results / "records" / "embedded__boom__b10__s0.failed.json").read_text())
    assert boom["error"] == "RuntimeError: boom from the method itself"
    assert "\x1b" not in boom["traceback"] and "\x1b" not in failure["error"]
    sleepy = json.loads((results / "records" / "embedded__sleepy__b10__s0.failed.json").read_text())
    assert sleepy["error"].startswith("TimeoutError: the cell ran longer than runner.cell_timeout_s = 45 s")
    assert "missing embedded__boom__b10__s0: failed: RuntimeError: boom from the method itself" in proc.stdout
    for table in (results / "tables" / "embedded.md", results / "tables" / "embedded.tex"):
        assert "\x1b" not in table.read_text() and "boom from the method itself" in table.read_text(), table
