"""Tuning inside the grid: every method's parameters chosen on val, with the same number of
trials, before its test cells run.

With a ``tuning`` section, a run has two phases. Phase 1, per (dataset, method, budget) whose
entry has a ``search`` space: ``tuning.trials`` trials, each an ordinary cell evaluated on the
**val** split (records under ``results_dir/tuning/``, so cached, resumable and parallel like any
cell), proposed by a seeded sampler; the best val mean (the mean of the six recalls over the
trial's evaluation seeds; ties: the earlier trial) is the choice. Phase 2 is the grid as it
would run with the chosen values written into ``budget_params``: the test cells, unchanged.
The test split is not read before phase 2. With ``audit``, every trial's set is then also
evaluated on test (``results_dir/tuning/audit/``) to measure whether val could choose (Kendall's
tau between the trials' val and test means, and the test recall the choice lost against the
best trial); the audit never changes the choice.

Samplers: ``grid`` (every combination of the listed values, in an order shuffled by the seed,
the first ``trials`` of them; exact and library-free), ``random`` and ``tpe`` (Optuna's
RandomSampler and TPESampler through its ask-and-tell interface: a well-kept library with
seeded, reproducible samplers, log and integer ranges, and no database needed). TPE proposes
``batch`` trials at a time from what the earlier ones scored; the first batch is random.

A trial is one run of the method. For a method with a ``snapshot_param`` (a trajectory
method's ``iterations``) listed in its space, a trial is evaluated at every listed value of it
at the cost of one run: the largest value runs, with snapshots at the others, which the cells of
the smaller values then read (their results are bitwise those of a run stopped there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.config import ConfigError, field_values, from_dict
from bench.core.io import stable_hash
from bench.grid.search import Choice, Range, Space, TuningConfig, grid_points, method_space
from bench.grid.spec import Cell, GridConfig, MethodSpec, check_expert_epochs
from bench.grid.store import ResultStore
from bench.registry import get_method

#: Where the trials' records go, under the grid's results_dir.
TUNING_DIR = "tuning"
AUDIT_DIR = "audit"
TRIAL_SPLIT = "val"


@dataclass
class Trial:
    """One evaluated parameter set of a group (several per run for a snapshot parameter)."""

    label: str
    run: int  # the index of the method run (the sampler's trial) it belongs to
    values: dict[str, Any]  # the space's values
    params: dict[str, Any]  # the cell's raw parameters
    leader: bool = True  # runs the method itself (False: reads a snapshot of its leader)
    problem: str | None = None  # an invalid combination: not run
    val_mean: float | None = None
    val_std: float | None = None
    seconds: float | None = None
    error: str | None = None
    test_mean: float | None = None  # the audit's

    def summary(self) -> dict[str, Any]:
        out = {"label": self.label, "params": self.values, "val_mean": self.val_mean, "val_std": self.val_std,
               "seconds": self.seconds}
        if self.error or self.problem:
            out["error"] = self.problem or self.error
        if self.test_mean is not None:
            out["test_mean"] = self.test_mean
        return out


@dataclass
class Group:
    """The trials of one (dataset, method, budget)."""

    dataset: str
    spec: MethodSpec
    budget: int
    space: Space
    trials: list[Trial] = field(default_factory=list)
    chosen: Trial | None = None
    audit: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None  # the entry's own values of the space (its first trial)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.dataset, self.spec.key, self.budget)

    @property
    def cost_s(self) -> float:
        return round(sum(t.seconds or 0.0 for t in self.trials), 3)


def tuning_groups(grid: GridConfig) -> list[Group]:
    """Every (dataset, method, budget) with a search space, in plan order."""
    groups = []
    for data in grid.datasets:
        for i, spec in enumerate(grid.methods):
            cls = get_method(spec.name)
            for budget in spec.budgets_of(grid.budgets):
                space = method_space(spec, cls, budget, f"methods[{i}] ({spec.key})")
                if space is not None:
                    groups.append(Group(data.name, spec, budget, space))
    return groups


# ----------------------------------------------------------------------------- proposing trials
class _Proposer:
    """Proposes the parameter values of a group's runs (its sampler, seeded per group)."""

    def __init__(self, tuning: TuningConfig, group: Group, snapshot_param: str | None) -> None:
        self.tuning = tuning
        self.space = {k: v for k, v in group.space.items() if k != snapshot_param}
        seed = int(stable_hash([tuning.seed, *group.key])[:8], 16)
        self.pending: list[Any] = []
        recipe = recipe_point(group, self.space)
        discrete = all(isinstance(d, Choice) for d in self.space.values())
        if tuning.sampler == "grid" or (tuning.sampler == "random" and discrete):
            # Random over lists of values = the grid in a seeded random order: no point twice.
            import numpy as np

            points = grid_points(self.space, f"{group.spec.key}: search")
            order = np.random.default_rng(seed).permutation(len(points))
            self.points = [points[i] for i in order]
            if recipe is not None:  # the entry's own recipe first
                self.points = [recipe] + [p for p in self.points if p != recipe]
            self.study = None
        else:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = (optuna.samplers.RandomSampler(seed=seed) if tuning.sampler == "random" else
                       optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(tuning.batch, tuning.trials)))
            self.study = optuna.create_study(direction="maximize", sampler=sampler)
            self.distributions = {name: _distribution(dim) for name, dim in self.space.items()}
            if recipe is not None:  # the entry's own recipe first
                self.study.enqueue_trial({name: dim.values.index(recipe[name]) if isinstance(dim, Choice) else recipe[name]
                                          for name, dim in self.space.items()})
        self.asked = 0

    @property
    def limit(self) -> int:
        """Runs to propose: ``trials``, fewer when the space has fewer points (one when empty)."""
        if not self.space:
            return 1
        return self.tuning.trials if self.study is not None else min(self.tuning.trials, len(self.points))

    def ask(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(min(n, self.limit - self.asked)):
            if self.study is None:
                out.append(self.points[self.asked])
            else:
                trial = self.study.ask(self.distributions)
                self.pending.append(trial)
                out.append({name: _value(self.space[name], trial.params[name]) for name in self.space})
            self.asked += 1
        return out

    def tell(self, values: list[float | None]) -> None:
        if self.study is None:
            return
        import optuna

        for trial, value in zip(self.pending, values):
            if value is None:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, value)
        self.pending = []


def recipe_point(group: Group, space: Space) -> dict[str, Any] | None:
    """The entry's own values of the space's parameters, when each lies in its dimension: the
    first trial, so that tuning never chooses below the recipe on val, and the record says how
    far the recipe was from the choice. None when some value lies outside the space."""
    cls = get_method(group.spec.name)
    resolved = field_values(from_dict(cls.Params, group.spec.params_for(group.budget)))
    point = {}
    for name, dim in space.items():
        value = resolved[name]
        if isinstance(dim, Choice):
            if value not in dim.values:
                return None
        elif not (isinstance(value, (int, float)) and dim.low <= value <= dim.high):
            return None
        point[name] = value
    return point


def _distribution(dim: Choice | Range) -> Any:
    import optuna

    if isinstance(dim, Choice):  # indices: Optuna's categories must be plain scalars
        return optuna.distributions.CategoricalDistribution(list(range(len(dim.values))))
    if dim.int:
        return optuna.distributions.IntDistribution(int(dim.low), int(dim.high), log=dim.log)
    return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)


def _value(dim: Choice | Range, raw: Any) -> Any:
    return dim.values[raw] if isinstance(dim, Choice) else raw


# ----------------------------------------------------------------------------- running trials
def _trials_of_run(grid: GridConfig, group: Group, run: int, values: dict[str, Any],
                   snapshot_param: str | None) -> list[Trial]:
    """The trials of one method run: one, or one per value of the snapshot parameter (the
    largest value leads and snapshots the others)."""
    cls = get_method(group.spec.name)
    base = group.spec.params_for(group.budget)
    # Named by its values: a point proposed twice (TPE may) is one cell, run once.
    stem = f"{group.spec.key}-b{group.budget}-{stable_hash(values)[:8]}"
    dim = group.space.get(snapshot_param) if snapshot_param else None
    if not isinstance(dim, Choice) or len(dim.values) < 2:
        trials = [Trial(stem, run, dict(values), {**base, **values})]
    else:
        steps = sorted(dim.values)
        trials = []
        for step in steps:
            params = {**base, **values, snapshot_param: step}
            leader = step == steps[-1]
            if leader:
                params["snapshots"] = [s for s in steps[:-1]]
            trials.append(Trial(f"{stem}-{snapshot_param[:4]}{step}", run, {**values, snapshot_param: step},
                                params, leader))
    for trial in trials:
        try:
            check_expert_epochs(grid, group.spec, from_dict(cls.Params, trial.params), trial.label)
        except ConfigError as exc:
            trial.problem = f"an invalid combination: {str(exc).split(': ', 1)[-1]}"
    if trials[-1].problem and len(trials) > 1:  # without its leader no follower is cheap: each runs itself
        for trial in trials:
            trial.leader = True
    return trials


def trial_grid(grid: GridConfig, dataset: str, trials: list[tuple[Group, Trial]], split: str,
               results_dir: Path) -> GridConfig:
    """The grid of ``trials`` on ``dataset``: each trial a method entry at its budget, evaluated
    on ``split`` with the tuning's seeds, headline only (no curves, other students or protocols),
    no ``full`` row, the first method seed."""
    tuning = grid.tuning or TuningConfig()
    ev = grid.evaluation
    evaluation = dataclasses.replace(ev, split=split, seeds=tuning.eval_seeds or ev.seeds, eval_every=None,
                                     protocol=ev.protocol[:1], students={})
    methods = tuple(MethodSpec(g.spec.name, params=t.params, label=t.label, budgets=(g.budget,)) for g, t in trials)
    budgets = tuple(b for b in grid.budgets if any(g.budget == b for g, _ in trials))
    return dataclasses.replace(grid, datasets=tuple(d for d in grid.datasets if d.name == dataset), methods=methods,
                               budgets=budgets, method_seeds=grid.method_seeds[:1], include_full=False,
                               evaluation=evaluation, results_dir=str(results_dir), tuning=None)


def _run_trials(grid: GridConfig, dataset: str, trials: list[tuple[Group, Trial]], split: str, results_dir: Path,
                plugins: list[str], progress: bool, on_test: bool = False) -> None:
    """Run the trials as cells (finished ones are skipped) and read their results back."""
    from bench.grid.runner import GridRun

    runnable = [(g, t) for g, t in trials if t.problem is None]
    if not runnable:
        return
    unique = list({t.label: (g, t) for g, t in runnable}.values())  # a point proposed twice runs once
    sub = trial_grid(grid, dataset, unique, split, results_dir)
    GridRun(sub, plugins=plugins, progress=progress).run()
    store = ResultStore(results_dir)
    seed = sub.method_seeds[0]
    for group, trial in runnable:
        cell = Cell(dataset, trial.label, group.budget, seed)
        record = store.read_record(cell)
        if record is None or record.eval_split != split:
            failure = store.read_failure(cell)
            if not on_test:
                trial.error = failure.reason if failure is not None else "no record"
            continue
        mean, std = record.metric_summary("mean")
        if on_test:
            trial.test_mean = mean
            continue
        trial.val_mean, trial.val_std = mean, std
        trial.seconds = round(float(record.method_cost.get("seconds", 0.0)) + float(record.eval_cost.get("seconds", 0.0)), 3)


def _run_leaders_first(grid: GridConfig, trials: list[tuple[Group, Trial]], split: str, results_dir: Path,
                       plugins: list[str], progress: bool, on_test: bool = False) -> None:
    """:func:`_run_trials` per dataset, the leaders before the followers, which read the
    snapshots their leaders write."""
    for data in grid.datasets:
        mine = [(g, t) for g, t in trials if g.dataset == data.name]
        for leaders in (True, False):
            _run_trials(grid, data.name, [(g, t) for g, t in mine if t.leader is leaders], split, results_dir,
                        plugins, progress, on_test)


@dataclass
class TuningResult:
    """The groups with their trials and choices, and the grid of phase 2."""

    groups: list[Group]
    grid: GridConfig

    def record_block(self, dataset: str, key: str, budget: int | None) -> dict[str, Any] | None:
        """What a test record of the cell carries under ``tuning``."""
        group = next((g for g in self.groups if g.key == (dataset, key, budget)), None)
        if group is None:
            return None
        tuning = self.grid.tuning or TuningConfig()
        block = {"trials": [t.summary() for t in group.trials], "chosen": group.chosen.values if group.chosen else None,
                 "chosen_label": group.chosen.label if group.chosen else None, "sampler": tuning.sampler,
                 "seed": tuning.seed, "runs": tuning.trials, "split": TRIAL_SPLIT,
                 "eval_seeds": list(tuning.eval_seeds or self.grid.evaluation.seeds), "cost_s": group.cost_s,
                 "recipe": group.recipe}
        if group.audit is not None:
            block["audit"] = group.audit
        return block


def tune_grid(grid: GridConfig, plugins: list[str] | None = None, progress: bool = True,
              say: Callable[[str], None] = print) -> TuningResult:
    """Phase 1: run every group's trials on val and choose; returns the grid of phase 2."""
    assert grid.tuning is not None
    tuning = grid.tuning
    plugins = list(plugins or [])
    results_dir = Path(grid.results_dir) / TUNING_DIR
    groups = tuning_groups(grid)
    proposers = {}
    for group in groups:
        group.recipe = recipe_point(group, group.space)
        proposers[group.key] = _Proposer(tuning, group, get_method(group.spec.name).snapshot_param)
    per_round = tuning.batch if tuning.sampler == "tpe" else tuning.trials
    round_no = 0
    while True:
        asked = {g.key: proposers[g.key].ask(per_round) for g in groups}
        if not any(asked.values()):
            break
        round_no += 1
        fresh: list[tuple[Group, Trial]] = []
        for group in groups:
            snapshot_param = get_method(group.spec.name).snapshot_param
            for values in asked[group.key]:
                run = len({t.run for t in group.trials})
                for trial in _trials_of_run(grid, group, run, values, snapshot_param):
                    group.trials.append(trial)
                    fresh.append((group, trial))
        say(f"tuning: round {round_no}: {len(fresh)} trial cell(s) of {len(groups)} (dataset, method, budget) "
            f"group(s) on {TRIAL_SPLIT} ({tuning.sampler} sampler, seed {tuning.seed}); records in {results_dir}")
        _run_leaders_first(grid, fresh, TRIAL_SPLIT, results_dir, plugins, progress)
        for group in groups:
            runs = sorted({t.run for g, t in fresh if g is group})
            scores = []
            for run in runs:
                values = [t.val_mean for t in group.trials if t.run == run and t.val_mean is not None]
                scores.append(max(values) if values else None)
            proposers[group.key].tell(scores)
    for group in groups:
        group.chosen = choose(group.trials)
    tuned = chosen_grid(grid, groups)
    if tuning.audit:
        run_audit(grid, groups, results_dir / AUDIT_DIR, plugins, progress)
    return TuningResult(groups, tuned)


def choose(trials: list[Trial]) -> Trial | None:
    """The trial with the best val mean (the earliest among equals); None if none finished."""
    done = [t for t in trials if t.val_mean is not None]
    if not done:
        return None
    best = max(t.val_mean for t in done)  # type: ignore[type-var]
    return next(t for t in done if t.val_mean == best)


def chosen_grid(grid: GridConfig, groups: list[Group]) -> GridConfig:
    """The grid of phase 2: each tuned method's chosen values in its ``budget_params``; a
    (method, budget) none of whose trials finished is dropped from the method's budgets (its
    cell shows no number, and the run reports it)."""
    by_method: dict[str, list[Group]] = {}
    for group in groups:
        by_method.setdefault(group.spec.key, []).append(group)
    methods = []
    for spec in grid.methods:
        mine = by_method.get(spec.key)
        if not mine:
            methods.append(spec)
            continue
        budget_params = {b: dict(p) for b, p in spec.budget_params.items()}
        failed = set()
        for group in mine:
            if group.chosen is None:
                failed.add(group.budget)
                continue
            values = {k: v for k, v in group.chosen.values.items()}
            budget_params[group.budget] = {**budget_params.get(group.budget, {}), **values}
        # The same choice on every dataset is required for one method entry: a grid with
        # several datasets gets the choice of its first dataset only if they agree.
        choices = {}
        for group in mine:
            if group.chosen is not None:
                choices.setdefault(group.budget, set()).add(repr(sorted(group.chosen.values.items())))
        split = [b for b, c in choices.items() if len(c) > 1]
        if split:
            raise ConfigError(f"methods ({spec.key}): tuning chose different values per dataset at budget {split[0]}; "
                              "tune one dataset per grid (one method entry has one recipe per budget)")
        budgets = tuple(b for b in spec.budgets_of(grid.budgets) if b not in failed)
        methods.append(dataclasses.replace(spec, budget_params=budget_params,
                                           budgets=budgets if failed else spec.budgets))
    return dataclasses.replace(grid, methods=tuple(m for m in methods if m.budgets is None or m.budgets))


def run_audit(grid: GridConfig, groups: list[Group], results_dir: Path, plugins: list[str], progress: bool) -> None:
    """After the choice: every finished trial's parameters evaluated on test; Kendall's tau
    between the trials' val and test means, and the test recall the val choice lost against the
    best trial on test. Reads only what the choice already fixed; changes nothing of it."""
    from scipy.stats import kendalltau

    finished = [(g, t) for g in groups for t in g.trials if t.val_mean is not None]
    _run_leaders_first(grid, finished, "test", results_dir, plugins, progress, on_test=True)
    for group in groups:
        both = [t for t in group.trials if t.val_mean is not None and t.test_mean is not None]
        if group.chosen is None or not both:
            continue
        best = max(both, key=lambda t: t.test_mean)  # type: ignore[arg-type, return-value]
        tau = None
        if len(both) >= 2 and len({t.val_mean for t in both}) > 1 and len({t.test_mean for t in both}) > 1:
            tau = float(kendalltau([t.val_mean for t in both], [t.test_mean for t in both]).statistic)
        chosen_test = group.chosen.test_mean
        group.audit = {"kendall_tau": tau, "trials": len(both), "chosen_test_mean": chosen_test,
                       "best_test_mean": best.test_mean, "best_test_label": best.label,
                       "lost": None if chosen_test is None else round(best.test_mean - chosen_test, 4)}  # type: ignore[operator]


def annotate_records(result: TuningResult, store: ResultStore, cells: list[Cell]) -> int:
    """Write each tuned test cell's ``tuning`` block into its record (metadata of the choice:
    it does not enter the cell's hash). Returns how many records changed."""
    changed = 0
    for cell in cells:
        block = result.record_block(cell.dataset, cell.method, cell.budget)
        if block is None:
            continue
        record = store.read_record(cell)
        if record is None or record.tuning == block:
            continue
        store.write_record(cell, dataclasses.replace(record, tuning=block))
        changed += 1
    return changed

