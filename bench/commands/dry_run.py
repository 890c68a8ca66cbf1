"""``run_bench.py run --dry-run``: what a run of the config would do, computing nothing.

Every cell of the grid is listed as ``cached`` (its record has the current hash and its set
file is as written: a run skips it) or ``to compute`` (with why: no record, an older recipe,
a damaged set file, a failure last time), and per dataset what the cells to compute need
first: the prepared data (decoded images, caption embeddings), the expert trajectories and
the proxy runs, each cached or to make. The cache keys are recomputed from the config as
``run_bench.py cache`` does (annotations, captions and the text encoder's files are read; no
image is decoded, no model loaded), and nothing is written: no lock, no ``grid.json``, no
record moved aside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.commands.cache import dataset_refs
from bench.distill.experts import expert_dir, expert_file_problem, expert_key, expert_path
from bench.grid.spec import Cell, GridConfig, plan_cells, resolve_cell
from bench.grid.store import ResultStore
from bench.grid.tuning import TUNING_DIR, tuning_groups
from bench.protocol.proxy import proxy_key, proxy_path


@dataclass
class DryRun:
    """The plan: each cell's state, and per dataset what its cells to compute need first."""

    cells: list[tuple[Cell, str]] = field(default_factory=list)  # (cell, "cached" | "to compute (...)")
    needs: dict[str, list[str]] = field(default_factory=dict)  # dataset -> lines
    tuning: str | None = None  # what phase 1 of a tuned grid runs before these cells

    @property
    def to_compute(self) -> list[Cell]:
        return [cell for cell, state in self.cells if state != "cached"]

    def lines(self, grid_name: str) -> list[str]:
        cached = len(self.cells) - len(self.to_compute)
        out = [f"dry run of grid {grid_name}: {len(self.cells)} cells, {cached} cached, "
               f"{len(self.to_compute)} to compute; nothing was computed or written"]
        if self.tuning:
            out.append(f"  {self.tuning}")
        for dataset, needs in self.needs.items():
            out += [f"  {dataset}: {line}" for line in needs]
        width = max((len(state.split(" (")[0]) for _, state in self.cells), default=0)
        for cell, state in self.cells:
            head, _, why = state.partition(" (")
            out.append(f"  {head:<{width}}  {cell.id}" + (f"  ({why}" if why else ""))
        return out


def _cell_state(store: ResultStore, cell: Cell, cell_hash: str) -> str:
    """Why a run would compute ``cell``, or ``cached`` (:meth:`GridRun.pending`'s rule)."""
    record = store.read_record(cell)
    if record is not None and record.cell_hash == cell_hash:
        problem = store.set_problem(record)
        return "cached" if problem is None else f"to compute ({problem})"
    if record is not None:
        return "to compute (its record is of an older recipe)"
    if store.read_failure(cell) is not None:
        return "to compute (it failed last time)"
    return "to compute"


def _count(done: int, total: int, what: str, verb: str) -> str:
    if done == total:
        return f"{what}: {total} cached"
    return f"{what}: {done} of {total} cached, {total - done} to {verb}"


def dry_run(grid: GridConfig) -> DryRun:
    """What a run of ``grid`` would skip and compute (reads only)."""
    store, cache = ResultStore(grid.results_dir), Path(grid.cache_dir)
    plan = DryRun()
    resolved = {}
    for cell in plan_cells(grid):
        resolved[cell.id] = resolve_cell(grid, cell)
        plan.cells.append((cell, _cell_state(store, cell, resolved[cell.id].hash)))
    todo = plan.to_compute
    for cfg in grid.datasets:
        mine = [resolved[c.id].method_cls for c in todo if c.dataset == cfg.name]
        if not mine:
            continue
        ident, refs = dataset_refs(grid, cfg)
        data: Any = ident  # the key functions read only .name and .key
        needs = [_count(sum(p.exists() for p in refs), len(refs), "prepared data files", "make")]
        if any(cls.uses_experts for cls in mine):
            key = expert_key(data, grid.model, grid.experts, grid.evaluation.full_train)
            directory = expert_dir(cache, data, key)
            valid = sum(1 for i in range(grid.experts.n_experts) if expert_path(directory, i).is_file()
                        and expert_file_problem(expert_path(directory, i), key, grid.experts.epochs) is None)
            needs.append(_count(valid, grid.experts.n_experts, "experts", "train"))
        seeds = sorted({c.method_seed or 0 for c in todo
                        if c.dataset == cfg.name and resolved[c.id].method_cls.uses_proxy})
        if seeds:
            base = grid.evaluation.full_train
            there = sum(proxy_path(cache, data, proxy_key(data, grid.model, grid.proxy, base, s)).is_file()
                        for s in seeds)
            needs.append(_count(there, len(seeds), "proxy runs", "train"))
        plan.needs[cfg.name] = needs
    plan.tuning = _tuning_line(grid)
    return plan


def _tuning_line(grid: GridConfig) -> str | None:
    """A tuned grid first runs its trials on val; the test cells' values are chosen then, so
    the states listed are those of the entries' recipes (the first trial of each)."""
    if grid.tuning is None:
        return None
    groups = tuning_groups(grid)
    if not groups:
        return None
    return (f"tuning first: {len(groups)} (dataset, method, budget) group(s) x {grid.tuning.trials} trial(s) on val "
            f"(records under {Path(grid.results_dir) / TUNING_DIR}; finished trials are skipped); the cells below "
            "are listed with their recipes' values, the run's own carry the values chosen on val")
