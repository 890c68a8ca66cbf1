"""Tuning inside the grid: search spaces validated at load, trials as val cells, the choice is
the best val trial, the test split unread before it, the same seed gives the same trials, a
resumed tuning equals an uninterrupted one, and the audit never changes the choice."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from bench.core.config import ConfigError, from_dict, to_dict
from bench.data.types import Dataset
from bench.grid import tuning as tuning_module
from bench.grid.search import Choice, method_space
from bench.grid.spec import GridConfig, build_grid, load_grid
from bench.grid.tuning import TuningResult, annotate_records, tune_grid, tuning_groups
from bench.registry import all_methods, get_method
from tests.grid_helpers import REPO

MATCHING = {"syn_steps": 2, "max_start_epoch": 1, "batch_syn": 5}


def tuned_data(tmp_path, **tuning):
    return {
        "name": "tiny-tune",
        "results_dir": str(tmp_path / "results"),
        "cache_dir": str(tmp_path.parent / "shared-cache"),
        "datasets": [{"source": "embedded", "embedded": {
            "n_train_images": 40, "n_val_images": 6, "n_test_images": 20, "resolution": 16}}],
        "model": {"image_encoder": {"width": 8, "depth": 2}},
        "evaluation": {"seeds": [0, 1], "train": {"epochs": 2, "batch_size": 10},
                       "full_train": {"epochs": 1, "batch_size": 64}},
        "proxy": {"epochs": 2, "batch_size": 64},
        "experts": {"n_experts": 2, "epochs": 2, "batch_size": 32},
        "methods": ["random",
                    {"name": "facility-location", "search": "default"},
                    {"name": "distill-joint", "params": MATCHING,
                     "search": {"iterations": [2, 4], "lr_img": [10, 100, 1000]}}],
        "budgets": [10],
        "include_full": False,
        "runner": {"executor": "local"},
        "tuning": {"trials": 2, "sampler": "random", "seed": 0, "eval_seeds": [0], **tuning},
    }


def tuned_grid(tmp_path, **tuning) -> GridConfig:
    return build_grid(tuned_data(tmp_path, **tuning))


def _choices(result: TuningResult) -> dict:
    return {g.key: (g.chosen.label, g.chosen.values) for g in result.groups}


def _trials(result: TuningResult) -> dict:
    return {g.key: [(t.label, t.values, t.val_mean) for t in g.trials] for g in result.groups}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One tuned run (phase 1 and 2), with the splits every phase read."""
    tmp = tmp_path_factory.mktemp("tuned")
    grid = tuned_grid(tmp)
    reads: list[tuple[str, str]] = []
    original = Dataset.split

    def split(self, name):  # which split, read by which function
        reads.append((name, sys._getframe(1).f_code.co_name))
        return original(self, name)

    mp = pytest.MonkeyPatch()
    mp.setattr(Dataset, "split", split)
    try:
        result = tune_grid(grid, progress=False, say=lambda _: None)
        phase1 = list(reads)
        from bench.grid.runner import GridRun

        run = GridRun(result.grid, progress=False).run()
        annotate_records(result, run.store, run.cells)
        phase2 = reads[len(phase1):]
    finally:
        mp.undo()
    return tmp, grid, result, run, phase1, phase2


def test_the_choice_is_the_best_val_trial_and_the_record_says_so(first_run):
    _, _, result, run, _, _ = first_run
    for group in result.groups:
        finished = [t for t in group.trials if t.val_mean is not None]
        assert finished, group.key
        best = max(t.val_mean for t in finished)
        assert group.chosen.val_mean == best
        assert group.chosen is next(t for t in finished if t.val_mean == best)  # the earliest of equals
    joint = next(g for g in result.groups if g.spec.key == "distill-joint")
    # A trajectory method's run is evaluated at every listed iterations value.
    assert sorted(t.values["iterations"] for t in joint.trials) == [2, 2, 4, 4]
    record = run.store.read_record(next(c for c in run.cells if c.method == "distill-joint"))
    assert record.tuning["chosen"] == joint.chosen.values
    assert record.eval_split == "test"
    # The test cell runs exactly the chosen values.
    for name, value in joint.chosen.values.items():
        assert record.method_params[name] == value
    vals = [t["val_mean"] for t in record.tuning["trials"]]
    assert max(vals) == record.tuning["trials"][[t["label"] for t in record.tuning["trials"]].index(
        record.tuning["chosen_label"])]["val_mean"]


#: Functions that touch every split without scoring on it: the embedded pixels are rendered
#: into their cache once for all splits, the caption vectors are computed once for all
#: splits, and a record notes the split sizes.
NOT_SCORING = {"prepare_dataset", "<dictcomp>", "<lambda>", "build_record"}


def test_no_trial_reads_the_test_split_and_the_test_phase_does(first_run):
    _, _, _, _, phase1, phase2 = first_run
    scoring1 = [name for name, caller in phase1 if caller not in NOT_SCORING]
    assert "val" in scoring1 and "test" not in scoring1, phase1
    # The instrument sees a test read when there is one: the test phase's evaluation.
    assert ("test", "evaluate_variants") in phase2


def test_the_smaller_iterations_are_read_from_the_larger_runs_snapshot(first_run):
    tmp, _, result, _, _, _ = first_run
    from bench.grid.store import ResultStore

    store = ResultStore(tmp / "results" / "tuning")
    joint = next(g for g in result.groups if g.spec.key == "distill-joint")
    follower = next(t for t in joint.trials if t.values["iterations"] == 2)
    record = store.read_record(f"embedded__{follower.label}__b10__s0")
    assert record.method_info["resumes"] >= 1 and record.method_info["iterations"] == 2


def test_each_test_cell_scores_the_set_its_trial_was_chosen_by(first_run):
    """The test cell of the chosen values makes no set: it evaluates the chosen trial's set
    (bench/grid/set_index.py), bit for bit, says so, and counts what that set cost to make."""
    tmp, _, result, run, _, _ = first_run
    from bench.grid.store import ResultStore

    trials = ResultStore(tmp / "results" / "tuning")
    for group in result.groups:
        trial_id = f"embedded__{group.chosen.label}__b10__s0"
        trial = trials.read_record(trial_id)
        cell = next(c for c in run.cells if c.method == group.spec.key)
        record = run.store.read_record(cell)
        assert record.method_info["set_of"] == trial_id, group.key
        assert record.method_info["set_seconds_earlier"] == pytest.approx(trial.set_seconds())
        assert record.set_seconds() == pytest.approx(record.method_cost["seconds"] + trial.set_seconds())
        mine, theirs = run.store.load_set(cell), trials.load_set(trial_id)
        for name in ("images", "text_emb", "image_index", "source_indices"):
            a, b = mine[name], theirs[name]
            assert (a is None and b is None) or torch.equal(a, b), (group.key, name)
        assert mine["learned_lrs"] == theirs["learned_lrs"]


def test_the_same_seed_gives_the_same_trials_and_choice_and_the_audit_changes_nothing(first_run, tmp_path):
    tmp, grid, result, _, _, _ = first_run
    again = tune_grid(grid, progress=False, say=lambda _: None)  # cached trials: cheap
    assert _trials(again) == _trials(result) and _choices(again) == _choices(result)
    audited = tune_grid(dataclasses.replace(grid, tuning=dataclasses.replace(grid.tuning, audit=True)),
                        progress=False, say=lambda _: None)
    assert _choices(audited) == _choices(result)
    for group in audited.groups:
        assert group.audit is not None and group.audit["chosen_test_mean"] is not None
        assert group.audit["lost"] >= 0
    # Another seed proposes another pair of the six (lr_img, iterations) runs' points.
    other = tuning_module._Proposer(dataclasses.replace(grid.tuning, seed=1), next(
        g for g in tuning_groups(grid) if g.spec.key == "distill-joint"), "iterations")
    same = tuning_module._Proposer(grid.tuning, next(
        g for g in tuning_groups(grid) if g.spec.key == "distill-joint"), "iterations")
    assert same.ask(3) == tuning_module._Proposer(grid.tuning, next(
        g for g in tuning_groups(grid) if g.spec.key == "distill-joint"), "iterations").ask(3)
    assert other.ask(3) != tuning_module._Proposer(grid.tuning, next(
        g for g in tuning_groups(grid) if g.spec.key == "distill-joint"), "iterations").ask(3)


def test_a_resumed_tpe_tuning_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    grid = tuned_grid(tmp_path / "whole", sampler="tpe", batch=1, trials=3)
    whole = tune_grid(grid, progress=False, say=lambda _: None)

    interrupted = tuned_grid(tmp_path / "killed", sampler="tpe", batch=1, trials=3)
    calls = []
    original = tuning_module._run_trials

    def dies_in_round_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # rounds run leaders, then followers: the third call is round two
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(tuning_module, "_run_trials", dies_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        tune_grid(interrupted, progress=False, say=lambda _: None)
    monkeypatch.setattr(tuning_module, "_run_trials", original)
    resumed = tune_grid(interrupted, progress=False, say=lambda _: None)
    assert _trials(resumed) == _trials(whole) and _choices(resumed) == _choices(whole)


@pytest.mark.parametrize("search,message", [
    ({"lr_imgg": [1, 2]}, "unknown config key"),
    ({"lr_img": {"low": 5, "high": 1}}, "low (5) must be below high (1)"),
    ({"lr_img": {"low": 0, "high": 1, "log": True}}, "a log range needs low > 0"),
    ({"lr_img": {"lo": 1, "high": 2}}, "unknown range key 'lo'"),
    ({"lr_img": []}, "an empty list"),
    ({"lr_img": [1, 1]}, "listed twice"),
    ({"syn_steps": [0, 2]}, "is not valid here"),
    ({"iterations": {"times": [0]}}, "factors must be positive"),
    ("everything", "search must be 'default'"),
])
def test_an_invalid_space_is_one_line_at_load(tmp_path, search, message):
    data = tuned_data(tmp_path)
    data["methods"][2]["search"] = search
    with pytest.raises(ConfigError) as info:
        build_grid(data)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "methods[2]" in str(info.value) or "search" in str(info.value)


def test_a_grid_sampler_refuses_a_range_and_budget_search_needs_a_grid_budget(tmp_path):
    data = tuned_data(tmp_path, sampler="grid")
    data["methods"][2]["search"] = {"lr_img": {"low": 1, "high": 100, "log": True}}
    with pytest.raises(ConfigError, match="grid sampler needs a list of values"):
        build_grid(data)
    data = tuned_data(tmp_path)
    data["methods"][2]["budget_search"] = {500: {"lr_img": [1]}}
    with pytest.raises(ConfigError, match="budget_search.500: budget 500 is not in budgets"):
        build_grid(data)


def test_an_invalid_space_on_the_command_line_exits_2_before_any_compute(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "run_bench.py"), "--no-progress",
                          "--set", f"results_dir={tmp_path / 'r'}", "--set", f"cache_dir={tmp_path / 'c'}",
                          "--set", "tuning={trials: 2}",
                          "--set", "methods=[{name: ccs, search: {beta: [0.1, 2.0]}}]"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "beta" in lines[0] and "methods[0]" in lines[0]
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.pt"))


def test_every_built_in_method_declares_a_valid_default_space(tmp_path):
    base = load_grid(REPO / "configs" / "embedded_full.yaml", ["device=cpu"])
    for spec in base.methods:
        cls = get_method(spec.name)
        entry = dataclasses.replace(spec, search="default")
        for budget in entry.budgets_of(base.budgets):
            space = method_space(entry, cls, budget, spec.key)
            assert space is not None
            for name, dim in space.items():
                assert isinstance(dim, Choice) and dim.values, (spec.key, name)
    names = {spec.name for spec in base.methods}
    # from-file evaluates a file it is given (nothing to tune, no entry of its own in embedded_full.yaml)
    assert names == {n for n, c in all_methods().items()
                     if c.__module__.startswith("methods.") and c.kind != "reference" and n != "from-file"}
    assert method_space(dataclasses.replace(base.methods[0], search="default"), get_method("random"), 100, "r") == {}


def test_trajectory_spaces_search_start_epochs_at_large_budgets():
    cls = get_method("distill-joint")
    assert "min_start_epoch" not in cls.default_search
    for budget in (500, 1000):
        assert {"min_start_epoch", "max_start_epoch"} <= set(cls.default_budget_search[budget])
    assert "iterations" in cls.default_search and cls.snapshot_param == "iterations"


def test_a_val_grid_with_curves_reports_without_a_selection_table(tmp_path):
    data = tuned_data(tmp_path)
    data.pop("tuning")
    data["methods"] = ["random", "kcenter"]
    data["evaluation"] = {**data["evaluation"], "split": "val", "eval_every": 1}
    grid = from_dict(GridConfig, data)
    from bench.grid.runner import GridRun
    from bench.reports.outputs import write_reports

    run = GridRun(grid, progress=False).run()
    write_reports(grid.results_dir, ["embedded"], run.results())
    tables = tmp_path / "results" / "tables"
    assert (tables / "embedded.md").is_file() and not (tables / "embedded_selection.md").exists()
    assert to_dict(grid)["evaluation"]["split"] == "val"


# ------------------------------------------------------------------------ recipes of a results dir

def test_the_recipes_config_runs_the_chosen_values_and_its_cells_are_the_records(first_run, tmp_path, capsys):
    """``run_bench.py recipes``: the tuned run's records as one config without tuning; each
    budget's override holds what val chose; on the same data every cell is already finished."""
    import yaml

    from bench.commands.cli import main
    from bench.grid.runner import GridRun
    from bench.reports.records import load_records

    tmp, _, result, run, _, _ = first_run
    out = tmp_path / "recipes.yaml"
    assert main(["recipes", str(run.store.root), "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    config = yaml.safe_load(out.read_text())
    assert "tuning" not in config and config["budgets"] == [10]
    joint = next(g for g in result.groups if g.spec.key == "distill-joint")
    entry = next(m for m in config["methods"] if m["name"] == "distill-joint")
    base = to_dict(from_dict(get_method("distill-joint").Params, entry["params"]))  # defaults filled in
    chosen = {k: v for k, v in joint.chosen.values.items() if base[k] != v}
    assert chosen  # the space is such that this run's choice differs from the recipe
    assert entry.get("budget_params", {}).get(10, {}) == chosen
    grid = load_grid(str(out))
    records = load_records(run.store.root)
    again = GridRun(grid, progress=False).run()
    assert not again.done and len(again.skipped) == len(records) == len(run.cells)


def test_the_recipes_config_refuses_records_it_cannot_describe(first_run):
    from bench.grid.recipes import RecipesError, recipes_config
    from bench.reports.records import load_records

    _, _, _, run, _, _ = first_run
    records = load_records(run.store.root)
    with pytest.raises(RecipesError, match="no finished record of dataset 'other'"):
        recipes_config(records, "other")
    model = {**records[0].config, "model": {**records[0].config["model"], "embed_dim": 7}}
    changed = dataclasses.replace(records[0], config=model, finished_at="9999")
    with pytest.raises(RecipesError, match=r"different model"):
        recipes_config([*records, changed], "embedded")
    twin = next(r for r in records if r.method == "distill-joint")
    other = dataclasses.replace(twin, method_params={**twin.method_params, "lr_img": 12345.0}, path="twin.json")
    with pytest.raises(RecipesError, match=r"twin.json: distill-joint ran with two parameter sets at 10 pairs"):
        recipes_config([*records, other], "embedded")
    stale = dataclasses.replace(twin, cell_hash="0" * 16, path="stale.json")
    with pytest.raises(RecipesError, match="does not reproduce the hash of stale.json"):
        recipes_config([r for r in records if r is not twin] + [stale], "embedded")


def test_a_leaders_snapshots_and_checkpoints_do_not_change_its_set_hash(tmp_path):
    """A trajectory trial that runs the largest iterations value keeps snapshots for the others;
    the test cell of that value keeps none. Neither that nor how often a run checkpoints changes
    the set (``Method.set_params``), so both cells share the set hash, and the cell hash still
    tells them apart; another iterations value or learning rate is another set."""
    from bench.grid.spec import Cell, resolve_cell

    def resolved(**params):
        data = tuned_data(tmp_path)
        data["methods"] = [{"name": "distill-joint", "params": {**MATCHING, "iterations": 4, **params}}]
        data.pop("tuning")
        return resolve_cell(build_grid(data), Cell("embedded", "distill-joint", 10, 0))

    test_cell = resolved()
    leader = resolved(snapshots=[2], checkpoint_every=1)
    assert leader.set_hash == test_cell.set_hash and leader.hash != test_cell.hash
    assert resolved(iterations=2).set_hash != test_cell.set_hash
    assert resolved(lr_img=7.0).set_hash != test_cell.set_hash


def test_the_tuning_tables_latex_prints_counts_and_chosen_values_as_the_markdown_does(first_run):
    """LaTeX rounds recalls to one decimal; a tuning table's counts and parameter values are not
    recalls (a count of 4 is not "4.0", a chosen lr of 0.003 not "0.0")."""
    from bench.reports.records import load_records
    from bench.reports.tables import latex_escape, render
    from bench.reports.tuning import tuning_table

    _, grid, _, _, _, _ = first_run
    table = tuning_table(load_records(grid.results_dir), "embedded")
    latex = render(table, "latex")
    assert "\\label{tab:embedded-tuning}" in latex
    for (method, pairs), row in table.iterrows():
        line = next(x for x in latex.splitlines() if x.startswith(f"{latex_escape(method)} & {pairs} & "))
        cells = [c.strip(" \\") for c in line.split(" & ")]
        assert cells[2] == latex_escape(row["chosen"])
        assert cells[5:8] == [str(row["trials"]), str(row["failed"]), str(row["cost s"])]
