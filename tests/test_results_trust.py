"""Results you can trust: nothing finished is lost or overwritten (every stale generation, one
driver per results directory, live temp files, a full disk), a record counts only with its set
file, a misbehaving method fails its own cell (bad indices, sys.exit, a hang) and the grid goes
on, and failure texts are the method's own, without terminal codes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bench import registry
from bench.commands.cli import main
from bench.core import io as bench_io
from bench.core.errors import UserError
from bench.core.io import atomic_path
from bench.grid.runner import GridRun
from bench.grid.store import ResultStore
from bench.methods_api import Method, MethodOutput, check_budget
from tests.grid_helpers import REPO, TINY_MODEL, tiny_grid

SMALL = [{"source": "embedded", "embedded": {"n_train_images": 20, "n_val_images": 2, "n_test_images": 10,
                                             "resolution": 16}}]
RANDOM = "embedded__random__b10__s0"


@dataclass(frozen=True)
class MisbehaveParams:
    mode: str = "ok"


@registry.register("test-misbehave", "coreset", "a plugin that breaks the method contract as params.mode says")
class Misbehave(Method):
    Params = MisbehaveParams

    def run(self, ctx, budget, seed):
        check_budget(budget, ctx.n_pairs)
        mode = self.params.mode
        if mode == "duplicates":  # ten copies of pair 0
            return MethodOutput(pairs=ctx.real_subset(np.zeros(budget, dtype=np.int64)))
        if mode == "duplicates-bypass":  # the same, without real_subset's check
            return MethodOutput(pairs=ctx.data.train_pairs(np.zeros(budget, dtype=np.int64)))
        if mode == "floats":  # 0.7 would become pair 0
            return MethodOutput(pairs=ctx.real_subset(np.arange(budget) + 0.7))
        if mode == "exit":
            sys.exit(0)
        if mode == "hang":
            time.sleep(600)
        if mode == "nan-info":
            return MethodOutput(pairs=ctx.real_subset(np.arange(budget)), info={"score": float("nan"),
                                                                                 "inf": [float("inf")]})
        return MethodOutput(pairs=ctx.real_subset(np.arange(budget)))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: caption embeddings are made once (caches are keyed by content)."""
    return tmp_path_factory.mktemp("trust-cache")


def _grid(tmp_path: Path, cache: Path, epochs: int = 1, methods: list | None = None, **overrides):
    return tiny_grid(tmp_path, cache_dir=str(cache), methods=methods or ["random"], datasets=SMALL,
                     include_full=False,
                     evaluation={"seeds": [0], "train": {"epochs": epochs, "batch_size": 10},
                                 "full_train": {"epochs": 1, "batch_size": 64}}, **overrides)


def _misbehaving(*modes: str) -> list:
    return ["random", *({"name": "test-misbehave", "label": f"m-{m}", "params": {"mode": m}} for m in modes)]


def _failure(results: Path, cell: str) -> dict:
    return json.loads((results / "records" / f"{cell}.failed.json").read_text())


# ----------------------------------------------------------------------------- item 1: stale generations


def test_every_stale_generation_is_kept(tmp_path, cache):
    """Three recipes in a row: the records of the first two are both kept under stale/, each
    under the hash of the recipe that made it (a retire used to replace the one before)."""
    hashes, means = [], []
    for epochs in (1, 2, 3):
        run = GridRun(_grid(tmp_path, cache, epochs=epochs), progress=False).run()
        assert [c.id for c in run.done] == [RANDOM]
        hashes.append(run.hashes[RANDOM])
        means.append(json.loads(run.store.record_path(RANDOM).read_text())["summary"])
    stale = tmp_path / "results" / "stale"
    assert sorted(p.name for p in stale.iterdir()) == sorted(hashes[:2])
    for cell_hash, summary in zip(hashes[:2], means[:2]):
        record = json.loads((stale / cell_hash / "records" / f"{RANDOM}.json").read_text())
        assert record["cell_hash"] == cell_hash and record["summary"] == summary
        assert (stale / cell_hash / "sets" / f"{RANDOM}.pt").is_file()


def test_retiring_the_same_recipe_twice_replaces_nothing(tmp_path):
    store = ResultStore(tmp_path)
    for text in ("first", "second"):
        store.record_path("c").parent.mkdir(parents=True, exist_ok=True)
        store.record_path("c").write_text(text)
        store.retire("c", "abc")
    assert (tmp_path / "stale" / "abc" / "records" / "c.json").read_text() == "first"
    assert (tmp_path / "stale" / "abc-2" / "records" / "c.json").read_text() == "second"


# ----------------------------------------------------------------------------- item 2: one driver per results dir


def _no_compute(monkeypatch):
    import bench.grid.cell

    def refuse(*args, **kwargs):
        raise AssertionError("work started although the results directory is locked")

    monkeypatch.setattr(bench.grid.cell, "prepare_dataset", refuse)


def test_a_second_driver_is_refused_and_a_dead_ones_lock_is_broken(tmp_path, cache, monkeypatch, capsys):
    results = tmp_path / "results"
    results.mkdir()
    lock = results / ".lock"
    lock.write_text(f"{bench_io._HOST} {os.getppid()} 2026-01-01T00:00:00+0000\n")  # a live process
    with monkeypatch.context() as patch:
        _no_compute(patch)
        with pytest.raises(UserError, match=rf"results_dir {results} is in use by another run "
                                                      rf"\(pid {os.getppid()} on host {bench_io._HOST}, since"):
            GridRun(_grid(tmp_path, cache), progress=False).run()
        args = ["--no-progress", "--executor", "local", "--set", f"results_dir={results}",
                "--set", f"cache_dir={cache}"]
        assert main(args) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: results_dir {results} is in use by another run (pid ")
    assert lock.read_text().split()[1] == str(os.getppid())  # the holder's lock is left alone

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(f"{bench_io._HOST} {int(dead.stdout)} 2026-01-01T00:00:00+0000\n")  # a killed run's
    assert [c.id for c in GridRun(_grid(tmp_path, cache), progress=False).run().done] == [RANDOM]
    assert not lock.exists()  # released when the run ends


# ----------------------------------------------------------------------------- item 3: live temp files


def test_the_start_of_run_sweep_keeps_live_temp_files(tmp_path, cache):
    records = tmp_path / "results" / "records"
    records.mkdir(parents=True)
    host = bench_io._HOST
    live = records / f".{RANDOM}.json.{host}~{os.getppid()}~0123abcd.tmp"  # another live process's
    remote = records / f".{RANDOM}.json.otherhost~1~0123abcd.tmp"  # maybe alive on another node
    old = records / ".x.json.otherhost~1~0123abcd.tmp"
    for path in (live, remote, old):
        path.write_text("being written")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    GridRun(_grid(tmp_path, cache), progress=False).run()
    assert live.exists() and remote.exists() and not old.exists()


# ----------------------------------------------------------------------------- item 5: a full disk


@pytest.mark.parametrize("cell_error", ["enospc", "unrecognisable"])
def test_a_full_disk_stops_the_run_in_one_line_and_a_rerun_resumes(tmp_path, cache, monkeypatch, capsys, cell_error):
    """The disk fills up during the second cell: its set file cannot be written (ENOSPC, or an
    error that does not say so, and then its failure record cannot be written either). The
    run ends with one line saying so and how to resume; the finished cell is kept."""
    import yaml

    from bench.core.config import to_dict

    grid = _grid(tmp_path, cache, methods=["random", "herding"])
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(to_dict(grid)))
    real_save = ResultStore.save_set

    def full_after_first(store, cell, output):
        if cell.method != "herding":
            return real_save(store, cell, output)
        if cell_error == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", str(store.set_path(cell)))
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    def no_room(store, cell, failure):
        from bench.core.io import DiskFullError

        raise DiskFullError(f"no space left on the device of {store.root} while writing {cell.id}.failed.json")

    with monkeypatch.context() as patch:
        patch.setattr(ResultStore, "save_set", full_after_first)
        patch.setattr(ResultStore, "write_failure", no_room)
        assert main(["--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: the disk is full: cell embedded__herding__b10__s0 failed ")
    assert f"1 finished cell(s) are kept in {grid.results_dir}; free some space and rerun the same command" in err[0]
    records = Path(grid.results_dir) / "records"
    first = (records / f"{RANDOM}.json").read_text()
    assert main(["--config", str(config), "--no-progress"]) == 0  # space freed: the rerun finishes
    assert (records / f"{RANDOM}.json").read_text() == first  # the finished cell was kept, not redone
    assert (records / "embedded__herding__b10__s0.json").is_file()
    assert not (Path(grid.results_dir) / ".lock").exists()


def test_a_writer_failing_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """torch.save says "file write failed", not ENOSPC: a failed write on a full filesystem is
    still reported as a full disk naming the file, and leaves no temporary file."""
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(bench_io.shutil, "disk_usage", lambda path: usage(2**30, 2**30, 0))
    target = tmp_path / "distill" / "ckpt.pt"
    with pytest.raises(UserError, match=rf"no space left on the device of {target.parent} while writing ckpt.pt"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file")
    assert list(target.parent.iterdir()) == []


# ----------------------------------------------------------------------------- item 6: the set file


def test_a_record_counts_only_with_its_set_file(tmp_path, cache):
    grid = _grid(tmp_path, cache)
    first = GridRun(grid, progress=False).run()
    store, cell_hash = first.store, first.hashes[RANDOM]
    record = json.loads(store.record_path(RANDOM).read_text())
    size = store.set_path(RANDOM).stat().st_size
    assert record["set_file"] == f"sets/{RANDOM}.pt" and record["set_bytes"] == size
    assert len(record["set_sha256"]) == 64

    store.set_path(RANDOM).write_bytes(store.set_path(RANDOM).read_bytes()[:100])  # truncated
    assert first.results().missing == {RANDOM: f"not finished: its set file {store.set_path(RANDOM)} has 100 "
                                               f"bytes, the record says {size} (truncated or replaced)"}
    again = GridRun(grid, progress=False).run()
    assert [c.id for c in again.done] == [RANDOM] and not again.skipped  # recomputed, not "already done"
    moved = store.root / "stale" / cell_hash
    assert (moved / "sets" / f"{RANDOM}.pt").stat().st_size == 100  # the damaged one kept for inspection
    assert store.set_path(RANDOM).stat().st_size == size

    store.set_path(RANDOM).unlink()  # deleted
    assert [c.id for c in GridRun(grid, progress=False).run().done] == [RANDOM]
    same_size = bytearray(store.set_path(RANDOM).read_bytes())
    same_size[-1] ^= 0xFF  # changed in place, same size: the hash tells
    store.set_path(RANDOM).write_bytes(bytes(same_size))
    assert [c.id for c in GridRun(grid, progress=False).run().done] == [RANDOM]


# ----------------------------------------------------------------------------- items 10, 11, 20, 22: methods


def test_a_method_breaking_the_contract_fails_its_own_cell(tmp_path, cache):
    """Duplicate or float indices (item 10) and sys.exit() in run() (item 11) each fail their
    own cell with a record saying why, and the grid goes on; a NaN in a method's info is
    written as valid JSON (item 22)."""
    grid = _grid(tmp_path, cache, methods=_misbehaving("duplicates", "duplicates-bypass", "floats", "exit",
                                                       "nan-info"))
    run = GridRun(grid, progress=False).run()
    assert sorted(c.id for c in run.done) == ["embedded__m-nan-info__b10__s0", RANDOM]
    results = Path(grid.results_dir)
    expected = {
        "duplicates": "ValueError: real_subset: the indices name pair 0 10 times",
        "duplicates-bypass": "ValueError: method 'm-duplicates-bypass' returned pairs whose source_indices name "
                             "pair 0 10 times",
        "floats": "ValueError: real_subset: the indices must be integers, got float64 (e.g. 0.7)",
        "exit": "MethodExit: method 'm-exit' called sys.exit(0) inside run()",
    }
    for mode, error in expected.items():
        failure = _failure(results, f"embedded__m-{mode}__b10__s0")
        assert failure["error"].startswith(error), failure["error"]
    text = (results / "records" / "embedded__m-nan-info__b10__s0.json").read_text()
    info = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in a record"))["method_info"]
    assert info["score"] is None and info["inf"] == [None]


def test_a_hanging_method_is_stopped_at_the_cell_timeout(tmp_path, cache):
    """Item 20: a cell past ``runner.cell_timeout_s`` is stopped (not retried), recorded as
    failed with the reason, and the next cell runs."""
    grid = _grid(tmp_path, cache, methods=[{"name": "test-misbehave", "label": "m-hang", "params": {"mode": "hang"}},
                                           "random"],
                 runner={"executor": "local", "max_retries": 1, "cell_timeout_s": 5})
    run = GridRun(grid, progress=False).run()
    assert [c.id for c in run.done] == [RANDOM]
    failure = _failure(Path(grid.results_dir), "embedded__m-hang__b10__s0")
    assert failure["error"].startswith("TimeoutError: the cell ran longer than runner.cell_timeout_s = 5 s and was "
                                       "stopped (not retried)")
    assert failure["attempts"] == 1


def test_sys_exit_from_a_method_is_a_failure_on_the_command_line(tmp_path, cache, capsys):
    results = tmp_path / "results"
    args = ["--no-progress", "--executor", "local"]  # test-misbehave is registered by this module
    for s in [f"results_dir={results}", f"cache_dir={cache}", f"datasets={json.dumps(SMALL)}",
              f"model={TINY_MODEL}", "evaluation.seeds=[0]", "evaluation.train.epochs=1", "include_full=false",
              "methods=[random, {name: test-misbehave, params: {mode: exit}}]", "budgets=[10]"]:
        args += ["--set", s]
    assert main(args) == 1  # some cells failed; before, the driver exited 0 with no output
    out = capsys.readouterr().out
    assert "1 cells run, 0 already done, 1 failed" in out
    assert "missing embedded__test-misbehave__b10__s0: failed: MethodExit: method 'test-misbehave' called sys.exit(0)" in out


# ----------------------------------------------------------------------------- item 17: error texts


def test_failure_texts_are_the_methods_own_without_terminal_codes(tmp_path):
    import traceback

    from ray.exceptions import RayTaskError

    from bench.grid.cell import failure_record
    from bench.grid.spec import Cell

    cell = Cell("embedded", "m", 10, 0)
    try:
        raise RuntimeError("the method's own message")
    except RuntimeError as exc:
        remote = RayTaskError("_ray_cell", "\x1b[36mray::_ray_cell()\x1b[39m\n" + traceback.format_exc(), exc)
        wrapped = remote.as_instanceof_cause()
    failure = failure_record(cell, "h", wrapped, 2)
    assert failure.error == "RuntimeError: the method's own message"
    assert "\x1b" not in failure.traceback and "ray::_ray_cell()" in failure.traceback

    # A failure record written by an older version, with the raw codes, reaches no table.
    store = ResultStore(tmp_path)
    store.write_failure(cell, failure.__class__(cell_id=cell.id, error="RayTaskError(RuntimeError): \x1b[36mray::x",
                                                cell_hash="h"))
    assert store.grid_results({cell.id: "h"}).missing == {cell.id: "failed: RayTaskError(RuntimeError): ray::x"}


# ----------------------------------------------------------------------------- item 13: the results directory


def test_reports_of_a_dataset_run_here_before_are_removed(tmp_path, cache, capsys):
    """A grid of another dataset into the same results dir: the old dataset's tables and plot
    (named by the previous grid.json) go; a file of the user's in tables/ stays."""
    results = tmp_path / "results"
    for name in ("tables/flickr30k.md", "tables/flickr30k.tex", "tables/flickr30k.csv",
                 "plots/flickr30k_recall_vs_budget.png", "tables/notes.md"):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text("old")
    ResultStore(results).write_manifest("old", "x", {"flickr30k__random__b10__s0": "h", "flickr30k__full": "h"})
    args = ["--no-progress", "--executor", "local"]
    for s in [f"results_dir={results}", f"cache_dir={cache}", f"datasets={json.dumps(SMALL)}",
              f"model={TINY_MODEL}", "evaluation.seeds=[0]", "evaluation.train.epochs=1", "include_full=false",
              "methods=[random]", "budgets=[10]"]:
        args += ["--set", s]
    assert main(args) == 0
    assert sorted(p.name for p in (results / "tables").iterdir()) == ["embedded.csv", "embedded.md", "embedded.tex",
                                                                      "notes.md"]
    assert sorted(p.name for p in (results / "plots").iterdir()) == ["embedded_recall_vs_budget.png"]


def test_an_empty_results_dir_is_a_config_error(tmp_path, monkeypatch, capsys):
    """It used to run the grid into the current directory and end with "results in "."""
    _no_compute(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["--no-progress", "--executor", "local", "--set", "results_dir=''"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --set \"results_dir=''\": results_dir is empty; name a directory (e.g. results/quickstart)"]


# ----------------------------------------------------------------------------- item 22: imports


def test_a_config_error_is_printed_before_torch_is_imported(tmp_path):
    code = ("import sys; from bench.commands.cli import main; rc = main(['--config', 'nowhere.yaml']); "
            "print(rc, sorted(m for m in ('torch', 'ray', 'matplotlib', 'pandas') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.split("\n")[0] == "2 []", proc.stdout + proc.stderr
    assert proc.stderr == "error: config file not found: nowhere.yaml\n"


def test_a_warning_is_one_console_line_once(tmp_path, cache):
    """Item 22: the "forgetting scores are degenerate" warning printed with a source line, for
    every cell; now one ``warning: ...`` line for two forgetting cells (a real process: pytest
    records warnings instead of printing them)."""
    args = [sys.executable, str(REPO / "run_bench.py"), "--no-progress", "--executor", "local"]
    for s in [f"results_dir={tmp_path / 'results'}", f"cache_dir={cache}", f"datasets={json.dumps(SMALL)}",
              f"model={TINY_MODEL}", "evaluation.seeds=[0]", "evaluation.train.epochs=1", "include_full=false",
              "methods=[forgetting]", "budgets=[10, 20]", "proxy.epochs=1"]:
        args += ["--set", s]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr.splitlines()
    degenerate = [line for line in err if "forgetting scores are degenerate" in line]
    assert len(degenerate) == 1 and degenerate[0].startswith("warning: forgetting scores are degenerate: "), err
    assert not [line for line in err if "self.choose" in line or "UserWarning" in line], err
