"""``--set budgets=[...]`` drops the per-budget entries of the budgets it removes, with one
warning; an entry for a budget the config file itself does not list stays an error."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from bench.core.config import ConfigError
from bench.grid.budget_overrides import apply_grid_overrides
from bench.grid.spec import load_grid, plan_cells, resolve_cell

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "configs" / "flickr30k.yaml"


def _load(path, overrides):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid = load_grid(path, overrides)
    return grid, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_scaling_the_paper_grid_down_drops_the_removed_budgets_entries(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data or model file is read
    grid, shown = _load(PAPER, ["budgets=[100]"])
    assert grid.budgets == (100,)
    assert all(not m.budget_params for m in grid.methods)
    assert len(shown) == 1
    assert shown[0] == ("--set 'budgets=[100]': dropped the entries of budgets no longer run: "
                        "methods[5] (lors).budget_params.200; methods[5] (lors).budget_params.500; "
                        "methods[6] (repblend).budget_params.200; methods[6] (repblend).budget_params.500; "
                        "methods[8] (ptm-st).budget_params.200; methods[8] (ptm-st).budget_params.500")
    # The cells that stay are the paper grid's own: same hashes, so their records stay valid.
    full = load_grid(PAPER)
    for cell in plan_cells(grid):
        assert resolve_cell(grid, cell).hash == resolve_cell(full, cell).hash
    # A budget that keeps its entry keeps it, and no warning names it.
    grid, shown = _load(PAPER, ["budgets=[100, 500]"])
    assert grid.method("lors").budget_params[500]["max_start_epoch"] == 3
    assert "budget_params.500" not in shown[0] and "lors).budget_params.200" in shown[0]


def test_no_warning_when_no_budget_is_removed():
    _, shown = _load(PAPER, ["budgets=[100, 200, 500, 1000, 2000]"])
    assert shown == []
    _, shown = _load(PAPER, ["evaluation.seeds=[0]"])
    assert shown == []


def test_a_methods_own_budgets_shrink_with_the_grid():
    grid, shown = _load(REPO / "configs" / "embedded_full.yaml", ["budgets=[100, 200]"])
    assert grid.method("distill-image").budgets == (100, 200)
    assert grid.method("distill-image").budget_params.keys() == {200}
    assert "methods[5] (distill-image).budgets 500" in shown[0]


def test_a_method_that_runs_only_at_removed_budgets_is_left_out_of_the_run():
    """The regime grid's 1000-pair piece: distill-image and distill-text run at 100-500 only, so
    ``budgets=[1000]`` leaves them out (named on the warning line) and every remaining cell keeps
    the hash it has in the whole grid."""
    config = REPO / "configs" / "embedded_flickr.yaml"
    grid, shown = _load(config, ["budgets=[1000]"])
    names = [m.name for m in grid.methods]
    assert "distill-image" not in names and "distill-text" not in names and "distill-joint" in names
    assert "methods[5] (distill-image), which runs only at budgets [100, 200, 500]" in shown[0]
    assert "methods[6] (distill-text), which runs only at budgets [100, 200, 500]" in shown[0]
    whole = load_grid(config)
    expected = {c.id: resolve_cell(whole, c).hash for c in plan_cells(whole) if c.budget == 1000 or c.budget is None}
    assert {c.id: resolve_cell(grid, c).hash for c in plan_cells(grid)} == expected
    # A method whose own budgets keep one stays, with only that one.
    grid, _ = _load(config, ["budgets=[500, 1000]"])
    assert grid.method("distill-image").budgets == (500,)


def _write(tmp_path: Path, budget_params: str) -> Path:
    config = tmp_path / "grid.yaml"
    config.write_text("name: x\nbudgets: [10, 20]\nmethods:\n- name: distill-joint\n"
                      f"  budget_params: {budget_params}\n")
    return config


def test_an_entry_for_a_budget_the_file_does_not_list_stays_an_error(tmp_path):
    config = _write(tmp_path, "{20: {lr_txt: 10}, 30: {lr_txt: 5}}")
    with pytest.raises(ConfigError, match=r"methods\[0\] \(distill-joint\)\.budget_params\.30: budget 30 is not in "):
        load_grid(config)
    with pytest.raises(ConfigError, match=r"methods\[0\] \(distill-joint\)\.budget_params\.30: budget 30 is not in "):
        load_grid(config, ["budgets=[10]"])  # 20 is dropped, 30 was never the file's
    grid, shown = _load(_write(tmp_path, "{20: {lr_txt: 10}}"), ["budgets=[10]"])
    assert grid.method("distill-joint").budget_params == {}
    assert shown == ["--set 'budgets=[10]': dropped the entries of budgets no longer run: "
                     "methods[0] (distill-joint).budget_params.20"]


def test_every_budget_keyed_entry_is_dropped_and_absent_ones_skipped():
    raw = {"budgets": [1, 2, 3], "methods": [
        "random",
        {"name": "a", "label": "la", "budget_params": {2: {"k": 1}, 1: {"k": 2}}, "budget_search": {"2": {"k": [1]}}},
        {"name": "b", "budget_search": {3: {}}, "budgets": [1, 3]},
        {"name": "c"},
        {"name": "d", "budgets": [2, 3]},
    ]}
    data, dropped = apply_grid_overrides(raw, ["budgets=[1]"])
    assert dropped == ["methods[1] (la).budget_params.2", "methods[1] (la).budget_search.2",
                       "methods[2] (b).budget_search.3", "methods[2] (b).budgets 3",
                       "methods[4] (d), which runs only at budgets [2, 3]"]
    assert data["methods"][1]["budget_params"] == {1: {"k": 2}} and data["methods"][1]["budget_search"] == {}
    assert data["methods"][2]["budgets"] == [1] and data["methods"][3] == {"name": "c"}
    assert len(data["methods"]) == 4 and len(raw["methods"]) == 5
    assert raw["methods"][1]["budget_params"].keys() == {1, 2}  # the file's data is not touched
    # Without an override of budgets nothing is dropped.
    assert apply_grid_overrides(raw, ["methods.1.name=z"])[1] == []
