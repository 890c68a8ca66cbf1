"""configs/embedded_flickr.yaml: the paper's regime on a CPU (Flickr30K's shape, 145,000 pairs),
every method tuned on its val split around embedded_full's recipes, and the pieces of
docs/regime.md that split it over sessions."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bench.grid.spec import GridConfig, load_grid, plan_cells, resolve_cell
from bench.registry import all_methods, discover

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "embedded_flickr.yaml"
COMMAND = "python run_bench.py --config configs/embedded_flickr.yaml"


@pytest.fixture(scope="module")
def grid() -> GridConfig:
    discover()
    return load_grid(CONFIG)


def cells_with_hashes(grid: GridConfig) -> dict[str, str]:
    return {cell.id: resolve_cell(grid, cell).hash for cell in plan_cells(grid)}


def test_flickr_shape_every_method_and_budget(grid: GridConfig) -> None:
    (data,) = grid.datasets
    spec = data.embedded
    assert data.source == "embedded"
    assert (spec.n_train_images, spec.n_val_images, spec.n_test_images, spec.captions_per_image) == (29000, 1014, 1000, 5)
    assert grid.budgets == (100, 200, 500, 1000) and grid.include_full
    assert grid.evaluation.eval_every  # curves: the selection rules of the table
    # from-file evaluates a set from a file: nothing to run on a generated dataset
    builtin = {name for name, cls in all_methods().items() if cls.__module__.startswith("methods.")} - {"full", "from-file"}
    assert {m.name for m in grid.methods} == builtin


def test_every_method_is_tuned_on_val_with_the_same_trials(grid: GridConfig) -> None:
    """The recipes are chosen on this set's val split: every entry searches its declared space,
    with one number of trials for all, and the audit measures what choosing on val lost."""
    assert grid.tuning is not None and grid.tuning.trials >= 2 and grid.tuning.audit
    assert all(m.search == "default" for m in grid.methods)


def test_every_recipe_is_its_groups_first_trial(grid: GridConfig) -> None:
    """Tuning searches around the recipe, so the recipe must be a point of each space: a value
    left out of the entry's dict at its default (min_start_epoch 0) once read as None there,
    and the trajectory methods at 500 and 1000 pairs tried two random points instead."""
    from bench.grid.tuning import recipe_point, tuning_groups

    groups = tuning_groups(grid)
    assert {(g.spec.key, g.budget) for g in groups if "min_start_epoch" in g.space} >= {
        ("distill-joint", 500), ("distill-joint", 1000), ("lors", 1000), ("repblend", 1000)}
    outside = [(g.spec.key, g.budget) for g in groups if recipe_point(g, g.space) is None]
    assert outside == []
    joint = next(g for g in groups if g.key == ("embedded", "distill-joint", 1000))
    assert recipe_point(joint, joint.space)["min_start_epoch"] == 0


def test_recipes_are_embedded_full_ones(grid: GridConfig) -> None:
    """Tuning aside (the entries' parameters are each method's first trial), every cell runs
    embedded_full's parameters, student and recipes: only the dataset (and where results go)
    differ."""
    full = load_grid(REPO / "configs" / "embedded_full.yaml")
    assert (grid.model, grid.evaluation, grid.proxy, grid.experts) == (full.model, full.evaluation, full.proxy,
                                                                       full.experts)
    ours = {c.id: resolve_cell(grid, c).params for c in plan_cells(grid)}
    theirs = {c.id: resolve_cell(full, c).params for c in plan_cells(full)}
    assert ours == theirs


def piece_commands() -> list[list[str]]:
    """The ``--set`` arguments of each run command of docs/regime.md's pieces block."""
    text = (REPO / "docs" / "regime.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- pieces -->\n```bash\n(.*?)```", text, re.S)
    assert block, "docs/regime.md has no pieces block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    commands = [shlex.split(line) for line in lines if line.startswith(COMMAND)]
    return [argv[len(shlex.split(COMMAND)):] for argv in commands]


def test_pieces_are_the_whole_grid(grid: GridConfig) -> None:
    """Each piece's cells are cells of the whole grid with the same hash (its records count as
    finished in the whole grid), and pieces 1-3 leave exactly the 1000-pair cells to the last."""
    pieces = piece_commands()
    assert len(pieces) == 4 and pieces[-1] == []  # the last piece is the plain command
    whole = cells_with_hashes(grid)
    covered: dict[str, str] = {}
    for argv in pieces[:-1]:
        assert argv[::2] == ["--set"] * (len(argv) // 2)
        piece = cells_with_hashes(load_grid(CONFIG, argv[1::2]))
        assert piece and all(whole.get(cell) == h for cell, h in piece.items()), argv
        covered.update(piece)
    left = set(whole) - set(covered)
    assert left == {c.id for c in plan_cells(grid) if c.budget == 1000}


def test_the_real_data_command_is_this_grid_on_karpathy_files(grid: GridConfig) -> None:
    """docs/regime.md's real-data command loads: the same student, recipes, search, trials and
    budgets, on a Karpathy dataset named flickr30k (the published numbers' key) at the
    generator's resolution; the recipes command it shows exists."""
    from bench.commands.cli import build_parser

    text = (REPO / "docs" / "regime.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- real-data -->\n```bash\n(.*?)```", text, re.S)
    assert block, "docs/regime.md has no real-data block"
    lines = [shlex.split(line) for line in block.group(1).replace("\\\n", " ").splitlines()
             if line.startswith("python run_bench.py")]
    tuned = lines[0][len(shlex.split(COMMAND)):]
    assert tuned[::2] == ["--set"] * (len(tuned) // 2)
    real = load_grid(CONFIG, tuned[1::2])
    (data,) = real.datasets
    assert data.source == "karpathy" and data.name == "flickr30k"
    assert data.karpathy.resolution == grid.datasets[0].embedded.resolution
    assert (real.model, real.evaluation, real.proxy, real.experts, real.tuning, real.budgets, real.methods) == (
        grid.model, grid.evaluation, grid.proxy, grid.experts, grid.tuning, grid.budgets, grid.methods)
    recipes = build_parser().parse_args(lines[1][2:])
    assert recipes.command == "recipes" and recipes.output == "embedded_flickr_recipes.yaml"
    assert lines[2][2:4] == ["--config", "embedded_flickr_recipes.yaml"] and lines[2][7:] == lines[0][7:]  # the same dataset
