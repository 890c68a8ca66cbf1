"""Grid runner: records, skipping, retries and failures, resume after a kill, Ray."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench import registry
from bench.grid.runner import GridRun
from bench.grid.spec import cell_hash, plan_cells
from bench.methods_api import Method
from tests.grid_helpers import RAY_ENV, tiny_grid, write_plugin
from tests.grid_helpers import cli_args as _cli_args
from tests.grid_helpers import metrics as _metrics
from tests.grid_helpers import records as _records


def test_local_grid_writes_records_sets_pictures_and_skips(tmp_path):
    grid = tiny_grid(tmp_path)
    run = GridRun(grid, progress=False).run()
    assert len(run.done) == 3 and not run.failed
    records = _records(Path(grid.results_dir))
    assert set(records) == {"embedded__full", "embedded__random__b10__s0", "embedded__herding__b10__s0"}
    herd = records["embedded__herding__b10__s0"]
    assert herd["n_pairs"] == 10 and herd["kind"] == "coreset" and herd["eval_seeds"] == [0, 1]
    assert herd["cell_hash"] == cell_hash(grid, plan_cells(grid)[2])
    # The evaluation's wall time covers the training of every evaluation seed (and more).
    assert herd["eval_cost"]["seconds"] >= sum(s["train_seconds"] for s in herd["per_seed"]) > 0
    assert herd["eval_cost"]["peak_rss_mb"] > 0
    assert herd["proxy_seconds"] is not None and records["embedded__random__b10__s0"]["proxy_seconds"] is None
    assert (Path(grid.results_dir) / herd["set_file"]).is_file()
    assert (Path(grid.results_dir) / "pictures" / "embedded__herding__b10__s0.png").is_file()
    mtimes = {p: p.stat().st_mtime_ns for p in (Path(grid.results_dir) / "records").glob("*.json")}
    again = GridRun(grid, progress=False).run()
    assert not again.done and len(again.skipped) == 3
    assert mtimes == {p: p.stat().st_mtime_ns for p in (Path(grid.results_dir) / "records").glob("*.json")}
    # A changed evaluation recipe makes every record stale.
    changed = tiny_grid(tmp_path, evaluation={"seeds": [0], "train": {"epochs": 2, "batch_size": 10},
                                              "full_train": {"epochs": 1}})
    assert len(GridRun(changed, progress=False).pending()) == 3


def test_a_cell_evaluates_the_set_that_a_cell_of_the_same_inputs_made(tmp_path, monkeypatch):
    """bench/grid/set_index.py: a grid whose evaluation changed evaluates its cells' sets again
    and does not make them again (the sets are bitwise the first run's, although the results'
    set files were moved to stale/ and rewritten; each record says where its set came from and
    what it cost); a kept set changed on disk, or other method inputs, make the set anew; the
    full row never reads the index."""
    import torch

    from bench.registry import get_method

    def evaluation(seed: int) -> dict:
        return {"seeds": [seed], "train": {"epochs": 2, "batch_size": 10}, "full_train": {"epochs": 1, "batch_size": 64}}

    grid = tiny_grid(tmp_path)
    GridRun(grid, progress=False).run()
    root = Path(grid.results_dir)
    first = _records(root)
    sets = {c: torch.load(root / "sets" / f"{c}.pt", weights_only=False) for c in first if c != "embedded__full"}

    for name in ("random", "herding"):  # neither may run again
        monkeypatch.setattr(get_method(name), "run", lambda *a, **k: pytest.fail("made its set again"))
    for seed in (1, 2):  # twice: the second reads the files the first rewrote
        run = GridRun(tiny_grid(tmp_path, evaluation=evaluation(seed)), progress=False).run()
        assert len(run.done) == 3 and not run.failed
        again = _records(root)
        for cell, saved in sets.items():
            info, now = again[cell]["method_info"], torch.load(root / "sets" / f"{cell}.pt", weights_only=False)
            assert info["set_of"] == cell and again[cell]["eval_seeds"] == [seed]
            assert info["set_seconds_earlier"] == pytest.approx(first[cell]["method_cost"]["seconds"])
            assert torch.equal(now["images"], saved["images"]) and torch.equal(now["text_emb"], saved["text_emb"])
            assert torch.equal(now["source_indices"], saved["source_indices"])
        assert "set_of" not in again["embedded__full"]["method_info"]
    monkeypatch.undo()

    (kept,) = (Path(grid.cache_dir) / "sets").glob("embedded-herding-*.pt")
    kept.write_bytes(kept.read_bytes() + b"\0")  # no longer as written: made again
    other_seed = tiny_grid(tmp_path, evaluation=evaluation(3), method_seeds=[1])  # other inputs: made anew
    GridRun(tiny_grid(tmp_path, evaluation=evaluation(3)), progress=False).run()
    GridRun(other_seed, progress=False).run()
    final = _records(root)
    assert "set_of" not in final["embedded__herding__b10__s0"]["method_info"]
    assert final["embedded__random__b10__s0"]["method_info"]["set_of"] == "embedded__random__b10__s0"
    assert "set_of" not in final["embedded__random__b10__s1"]["method_info"]


@registry.register("test-flaky", "coreset", "fails on its first call in a process")
class Flaky(Method):
    calls = 0

    def run(self, ctx, budget, seed):
        type(self).calls += 1
        if type(self).calls == 1:
            raise RuntimeError("transient failure")
        return registry.get_method("random")(None).run(ctx, budget, seed)


@registry.register("test-broken", "coreset", "always fails")
class Broken(Method):
    def run(self, ctx, budget, seed):
        raise RuntimeError("this method is broken")


def test_retry_then_failure_record_and_the_grid_goes_on(tmp_path):
    grid = tiny_grid(tmp_path, methods=["test-flaky", "test-broken", "random"], include_full=False)
    run = GridRun(grid, progress=False).run()
    assert {c.method for c in run.done} == {"test-flaky", "random"}
    assert [c.method for c in run.failed] == ["test-broken"]
    failure = json.loads((Path(grid.results_dir) / "records" / "embedded__test-broken__b10__s0.failed.json").read_text())
    assert failure["attempts"] == 2 and "this method is broken" in failure["traceback"]
    assert "embedded__test-broken__b10__s0" not in _records(Path(grid.results_dir))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_killed_grid_resumes_to_identical_results(tmp_path, executor):
    """The driver (and, under Ray, its local cluster) is killed mid-grid; the re-run skips
    the finished cells and ends with the records of an undisturbed run."""
    plugin = write_plugin(tmp_path)
    reference = tmp_path / "reference"
    subprocess.run(_cli_args(tmp_path, reference, plugin, "local"), check=True, cwd=tmp_path, capture_output=True)
    expected = _records(reference)
    assert len(expected) == 7

    results = tmp_path / "killed"
    proc = subprocess.Popen(_cli_args(tmp_path, results, plugin, executor), cwd=tmp_path, env=RAY_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((results / "records").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _records(results)
    assert 2 <= len(partial) < 7, "the kill should land mid-grid"
    finished_before = {k: (results / "records" / f"{k}.json").stat().st_mtime_ns for k in partial}

    subprocess.run(_cli_args(tmp_path, results, plugin, executor), check=True, cwd=tmp_path, capture_output=True, env=RAY_ENV)
    final = _records(results)
    assert set(final) == set(expected)
    assert _metrics(final) == _metrics(expected)
    for k, mtime in finished_before.items():  # finished cells were skipped, not redone
        assert (results / "records" / f"{k}.json").stat().st_mtime_ns == mtime
    assert not [p for p in results.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


@pytest.mark.timeout(600)
def test_ray_executor_runs_an_outside_plugin_and_lors(tmp_path):
    """An outside plugin and LoRS (experts as Ray tasks, soft targets through the evaluation)
    run under Ray with the numbers of the in-process executor."""
    plugin = write_plugin(tmp_path)
    extra = {"methods": "[random, kcenter, first-k, {name: lors, params: {iterations: 2, syn_steps: 2, batch_syn: 5, "
                        "checkpoint_every: 0, lr_sim: 1.0}}]",
             "experts": "{n_experts: 1, epochs: 3, batch_size: 20}"}
    results = tmp_path / "ray"
    proc = subprocess.run(_cli_args(tmp_path, results, plugin, "ray", **extra), cwd=tmp_path, capture_output=True,
                          text=True, env=RAY_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # A log (stdout captured): the suite's own line about the cluster instead of Ray's INFO
    # lines, and a line per task (expert, proxy, cell) started and done with its time.
    out = proc.stdout
    assert re.search(r"^ray: started a local cluster with \d+ CPUs", out, re.M), out[-3000:]
    assert "Started a local Ray instance" not in out + proc.stderr and "INFO worker.py" not in out + proc.stderr
    for task in ("expert 0 of embedded", "proxy embedded seed 0", "cell embedded__lors__b20__s0"):
        assert re.search(rf"^start {task}$", out, re.M) and re.search(rf"^done  {task} in \d+\.\d s", out, re.M), task
    records = _records(results)
    assert len(records) == 9
    first_k = records["embedded__first-k__b20__s0"]
    assert first_k["source_indices"] == list(range(20))
    assert records["embedded__lors__b20__s0"]["method_info"]["soft_targets"]["loss"] == "wbce"
    local = tmp_path / "local"
    subprocess.run(_cli_args(tmp_path, local, plugin, "local", **extra), check=True, cwd=tmp_path, capture_output=True)
    assert _metrics(records) == _metrics(_records(local))


@pytest.mark.parametrize("runner, resources, expected", [
    ({}, {"CPU": 16.0, "GPU": 4.0}, (1, 4)),  # one GPU per task on a GPU cluster
    ({}, {"CPU": 2.0}, (0, 2)),  # CPU-only: one task per cpus_per_task CPUs
    ({"cpus_per_task": 4}, {"CPU": 16.0}, (0, 4)),
    ({"gpus_per_task": 0.5}, {"CPU": 16.0, "GPU": 2.0}, (0.5, 4)),
    ({"gpus_per_task": 0}, {"CPU": 8.0, "GPU": 2.0}, (0, 8)),  # GPUs present but not asked for
    ({"max_concurrent": 1}, {"CPU": 16.0, "GPU": 4.0}, (1, 1)),
    ({"cpus_per_task": 4}, {"CPU": 2.0}, (0, 1)),  # never fewer than one slot
])
def test_task_slots_follow_cluster_resources(runner, resources, expected):
    from bench.core.config import from_dict
    from bench.grid.executors.ray_dispatch import task_slots
    from bench.grid.spec import RunnerConfig

    assert task_slots(from_dict(RunnerConfig, runner), resources) == expected


def test_stale_temp_files_are_removed_and_finished_files_kept(tmp_path):
    from bench.core.io import atomic_path, remove_stale_temp_files, write_text_atomic

    final = write_text_atomic(tmp_path / "records" / "a.json", "{}")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "records" / "b.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")  # atomic_path cleans up after an exception...
    assert not list(tmp_path.rglob(".*.tmp"))
    left = tmp_path / "sets" / ".c.pt.abc123.tmp"  # ...but a SIGKILLed writer leaves its temp file
    left.parent.mkdir()
    left.write_text("half")
    assert remove_stale_temp_files(tmp_path, older_than_s=3600) == []  # too recent for the cache rule
    assert remove_stale_temp_files(tmp_path) == [left]
    assert final.read_text() == "{}" and not left.exists()


def test_ray_plan_starts_the_proxy_before_the_experts_and_cells_after_both(tmp_path):
    """Dispatch order of the one-time work (longest job first): the proxy, then the experts,
    then cells; a cell waits for exactly the inputs its method uses."""
    from bench.grid.executors.ray_dispatch import _plan_jobs

    class Task:
        def remote(self, *args):  # never called while planning
            raise AssertionError("planning must not submit")

    grid = tiny_grid(tmp_path, methods=["random", "herding", "distill-joint"], experts={"n_experts": 3, "epochs": 2},
                     include_full=False)
    jobs = _plan_jobs(grid, plan_cells(grid), [], {"cell": Task(), "proxy": Task(), "expert": Task()})
    names, data = [j.name for j in jobs], grid.datasets[0].name
    assert names[:4] == [f"proxy {data} seed 0"] + [f"expert {i} of {data}" for i in range(3)]
    cells = {j.cell.method: j for j in jobs if j.cell is not None}
    assert set(cells) == {"random", "herding", "distill-joint"} and len(jobs) == 7
    assert [dep.name for dep in cells["herding"].deps] == [f"proxy {data} seed 0"]
    assert [dep.name for dep in cells["distill-joint"].deps] == [f"expert {i} of {data}" for i in range(3)]
    assert cells["random"].deps == []
