"""The config that runs a results directory's recipes again: what each cell ran, as YAML.

A tuned grid chooses every method's parameters per budget on val and runs the test cells with
them; a grid split into pieces (``--set budgets=[...]``) chooses them piece by piece. To run the
same recipes on other data (a real Flickr30K, say), or to check that a directory's numbers come
from the parameters it claims, a user needs those choices in one config. This builds it from
the records alone: the grid of the newest record, with every budget that has records, each
method's parameters of each budget in its ``budget_params`` (what differs from its ``params``), and no ``tuning``
section (it runs the recipes, it does not choose them again; the entries' ``search`` stays, so
putting ``tuning`` back tunes around them). Before it is returned, every record's cell is
planned from it and must have the record's hash: on the same data, the config's cells are the
records' cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.core.errors import UserError
from bench.grid.record import CellRecord
from bench.grid.spec import Cell, build_grid, cell_hash

#: The config sections a cell's hash reads; records that differ in them are different recipes.
HASHED = ("datasets", "model", "evaluation", "proxy", "experts")


class RecipesError(UserError):
    """The records cannot be described by one config (say which two differ, and in what)."""


def recipes_config(records: Sequence[CellRecord], dataset: str) -> dict[str, Any]:
    """The plain-data config (what ``build_grid`` reads) whose cells on ``dataset`` are the
    records' cells of that dataset, with their parameters; :class:`RecipesError` when the
    records have no config, were made by configs that differ in a hashed section, or a method
    appears under one key with two parameter sets at one budget."""
    mine = [r for r in records if r.dataset == dataset]
    if not mine:
        raise RecipesError(f"no finished record of dataset {dataset!r}")
    without = next((r for r in mine if not r.config), None)
    if without is not None:
        raise RecipesError(f"record {without.name} holds no config (written by an older version); run its grid again")
    mine.sort(key=lambda r: (r.finished_at or "", r.name))
    newest = mine[-1]
    base = {k: v for k, v in newest.config.items() if k != "tuning"}  # type: ignore[union-attr]
    for rec in mine:
        differ = [k for k in HASHED if rec.config.get(k) != newest.config.get(k)]  # type: ignore[union-attr]
        if differ:
            raise RecipesError(f"{rec.name} and {newest.name} were made with different {', '.join(differ)}; "
                               "one config cannot run both (keep one recipe's records in the directory)")

    entries = _entries(mine)
    params: dict[str, dict[int, dict[str, Any]]] = {}
    for rec in mine:
        if rec.budget is None:
            continue
        seen = params.setdefault(rec.method, {}).setdefault(int(rec.budget), rec.method_params)
        if seen != rec.method_params:
            raise RecipesError(f"{rec.name}: {rec.method} ran with two parameter sets at {rec.budget} pairs "
                               "(records of another recipe are in the directory)")
    budgets = sorted({b for per in params.values() for b in per})
    methods = []
    for key, entry in entries.items():
        runs = params.get(key, {})
        if not runs:
            continue  # the full row (a reference method): include_full below
        entry = {k: v for k, v in entry.items() if k not in ("budget_params", "budgets") and v is not None}
        base_params = _resolved(entry)
        overrides = {b: {k: v for k, v in runs[b].items() if base_params.get(k, _MISSING) != v} for b in sorted(runs)}
        if any(overrides.values()):
            entry["budget_params"] = {b: o for b, o in overrides.items() if o}
        if sorted(runs) != budgets:
            entry["budgets"] = sorted(runs)
        methods.append(entry)
    config = {**base, "budgets": budgets, "methods": methods,
              "include_full": any(r.budget is None for r in mine),
              "method_seeds": sorted({r.method_seed for r in mine if r.method_seed is not None})
              or base.get("method_seeds", [0])}
    _check_hashes(config, mine)
    return config


_MISSING = object()


def _resolved(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's ``params`` with every default filled in (what a budget without an override
    runs), so each budget's override lists only what differs from them."""
    from bench.core.config import from_dict, to_dict
    from bench.registry import get_method

    return to_dict(from_dict(get_method(entry["name"]).Params, entry.get("params") or {}))


def _entries(records: Sequence[CellRecord]) -> dict[str, dict[str, Any]]:
    """Each method key's entry, from the newest record's config that has it (older pieces of a
    grid may list methods a newer piece leaves out), ordered by its place in that config."""
    entries: dict[str, dict[str, Any]] = {}
    place: dict[str, int] = {}
    for rec in reversed(records):  # newest first: the first config seen listing a key is its newest
        for i, entry in enumerate(rec.config.get("methods", [])):  # type: ignore[union-attr]
            key = entry.get("label") or entry["name"]
            if key not in entries:
                entries[key], place[key] = dict(entry), i
    return {key: entries[key] for key in sorted(entries, key=place.__getitem__)}


def _check_hashes(config: dict[str, Any], records: Sequence[CellRecord]) -> None:
    """Every record's cell, planned from ``config``, has the record's hash (else the config
    would not run what the records hold: a bug here, said plainly)."""
    grid = build_grid(config)
    for rec in records:
        cell = Cell(rec.dataset, rec.method, rec.budget, rec.method_seed)
        if cell_hash(grid, cell) != rec.cell_hash:
            raise RecipesError(f"the recipes config does not reproduce the hash of {rec.name}; "
                               "its record may come from an older version of the suite (run its grid again)")
