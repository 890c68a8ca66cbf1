"""A table never shows a number that did not come from the config that was run: stale records
(an older recipe of a cell) and foreign ones (cells no longer in the grid) are never pooled,
and the cells without a current number are named with the reason."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench import registry
from bench.commands.cli import main
from bench.commands.console import print_grid_results
from bench.grid.runner import GridRun
from bench.methods_api import Method, MethodOutput, check_budget
from bench.reports.outputs import write_reports
from tests.grid_helpers import tiny_grid


@dataclass(frozen=True)
class SwitchParams:
    fail: bool = False


@registry.register("test-switch", "coreset", "the first pairs, or a failure when params.fail")
class Switch(Method):
    Params = SwitchParams

    def run(self, ctx, budget, seed):
        if self.params.fail:
            raise RuntimeError("switched off by the test")
        check_budget(budget, ctx.n_pairs)
        return MethodOutput(pairs=ctx.real_subset(list(range(budget))))


SMALL = [{"source": "embedded", "embedded": {"n_train_images": 20, "n_val_images": 2, "n_test_images": 10,
                                             "resolution": 16}}]


def _grid(tmp_path: Path, epochs: int, fail: bool, budgets: list[int]):
    return tiny_grid(tmp_path, methods=["random", {"name": "test-switch", "params": {"fail": fail}}],
                     budgets=budgets, datasets=SMALL,
                     evaluation={"seeds": [0], "train": {"epochs": epochs, "batch_size": 10},
                                 "full_train": {"epochs": 1, "batch_size": 64}})


def _shown(record_file: Path, metric: str = "mean") -> str:
    """The "mean ± std" a table shows for a record's ``metric`` ("mean" alone for one evaluation run)."""
    record = json.loads(record_file.read_text())
    summary = record["summary"][metric]
    if len(record["per_seed"]) == 1:
        return f"{summary['mean']:.1f}"
    return f"{summary['mean']:.1f} ± {summary['std']:.1f}"


def _markdown_columns(md: str) -> tuple[list[str], dict[str, list[str]]]:
    """The column names of a rendered markdown table and its rows by metric (budget 10 only)."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[1]] = cells[2:]
    return header[2:], rows


def test_changed_recipe_and_a_failing_cell_show_no_stale_number(tmp_path, capsys):
    old = _grid(tmp_path, epochs=2, fail=False, budgets=[10, 20])
    first = GridRun(old, progress=False).run()
    assert len(first.done) == 5 and not first.failed
    records = Path(old.results_dir) / "records"

    # Another recipe (3 epochs), budget 20 dropped from the grid, and test-switch now fails.
    new = _grid(tmp_path, epochs=3, fail=True, budgets=[10])
    run = GridRun(new, progress=False).run()
    assert {c.id for c in run.failed} == {"embedded__test-switch__b10__s0"}
    results = run.results()
    shown = {r.cell_id for r in results.records}
    assert shown == {"embedded__full", "embedded__random__b10__s0"}  # nothing stale, nothing foreign
    assert all(r.cell_hash == run.hashes[r.cell_id] for r in results.records)
    # Every record says how big each split was (the tables compare the test split with the paper's).
    assert {r.cell_id: r.split_sizes["test"] for r in results.records} == {
        c: {"images": 10, "captions": 50} for c in shown}
    assert results.missing == {"embedded__test-switch__b10__s0": "failed: RuntimeError: switched off by the test"}
    # The old record of the failing cell was moved aside (with its set and picture), under the
    # hash of the recipe that made it.
    stale = Path(new.results_dir) / "stale" / first.hashes["embedded__test-switch__b10__s0"]
    assert (stale / "records" / "embedded__test-switch__b10__s0.json").is_file()
    assert (stale / "sets" / "embedded__test-switch__b10__s0.pt").is_file()
    assert not (records / "embedded__test-switch__b10__s0.json").exists()

    # Console: the current numbers, and the failing cell with its reason on one line.
    out = io.StringIO()
    print_grid_results(results, Console(file=out, width=200))
    text = out.getvalue()
    assert "test-switch" not in text.split("missing")[0]  # not in the table part
    assert "missing embedded__test-switch__b10__s0: failed: RuntimeError: switched off by the test" in text

    # The tables written for the run, and the `table` command, show the same.
    write_reports(new.results_dir, ["embedded"], results)
    md = (Path(new.results_dir) / "tables" / "embedded.md").read_text()
    columns, rows = _markdown_columns(md)
    assert columns == ["random", "full"] and len(rows) == 8  # budget 10 only, no test-switch column; 7 metrics + norm
    assert rows["mean"] == [_shown(records / "embedded__random__b10__s0.json"), _shown(records / "embedded__full.json")]
    assert "Missing (no current result): embedded__test-switch__b10__s0 (failed: RuntimeError" in md
    capsys.readouterr()  # the runs' own lines (a line per task: stdout is not a terminal here)
    assert main(["table", new.results_dir]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == md.strip()
    assert "2 record(s)" in captured.err and "not shown" in captured.err  # the two budget-20 records
    assert "missing: embedded__test-switch__b10__s0 (failed: RuntimeError" in captured.err


def test_a_dataset_without_current_records_loses_its_old_tables(tmp_path):
    grid = _grid(tmp_path, epochs=2, fail=False, budgets=[10])
    GridRun(grid, progress=False).run()
    root = Path(grid.results_dir)
    write_reports(root, ["embedded"], GridRun(grid, progress=False).results())
    assert (root / "tables" / "embedded.md").is_file() and (root / "plots" / "embedded_recall_vs_budget.png").is_file()
    broken = tiny_grid(tmp_path, methods=[{"name": "test-switch", "params": {"fail": True}}], include_full=False,
                       datasets=SMALL)
    run = GridRun(broken, progress=False).run()
    write_reports(root, ["embedded"], run.results())
    assert not (root / "tables" / "embedded.md").exists() and not list((root / "plots").glob("*.png"))
