"""Choose a method's parameters per budget on the validation split, never on the test split.

    python run_bench.py tune --config configs/quickstart.yaml --method distill-joint --budget 100 \\
        --space lr_txt=[0.3,1,3] --space syn_steps=[10,20]

runs one grid cell per combination of the ``--space`` values (each merged over the method's
parameters for that budget, ``params`` + ``budget_params``), with ``evaluation.split: val``
forced, no ``full`` row, and results under ``<results_dir>/tune/<method>-b<budget>/`` (so the
tuning records never mix with the benchmark's own). Cells run on the config's executor (Ray:
in parallel) and are skipped when already finished, so a search can be extended. It prints
the combinations ranked by mean val recall (the mean of the six recalls, mean ± std over the
evaluation seeds) and the ``budget_params`` entry of the winner, to paste into the config with
a comment on how it was chosen; ``summary.json`` beside the records holds the same. The exit
status is 1 when a budget has no finished trial (every trial failed: nothing to rank).
"""

from __future__ import annotations

import argparse
import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.core.config import (
    ConfigError,
    apply_overrides,
    check_keys,
    check_unique,
    from_dict,
    load_yaml,
    parse_yaml,
    yaml_problem,
)
from bench.core.io import write_json_atomic
from bench.grid.record import CellRecord

if TYPE_CHECKING:
    from bench.grid.spec import MethodSpec

SPLIT = "val"


@dataclass(frozen=True)
class Trial:
    label: str
    values: dict[str, Any]


def parse_space(items: list[str]) -> dict[str, list[Any]]:
    """``name=[v1, v2]`` (YAML values) -> {name: [v1, v2]}; a bare value is a list of one."""
    space: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--space {item!r} must look like name=[value, value, ...]")
        name, raw = (part.strip() for part in item.split("=", 1))
        try:
            values = parse_yaml(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--space {item!r}: the values are not valid YAML ({yaml_problem(exc)})") from None
        values = values if isinstance(values, list) else [values]
        if not name or not values:
            raise ConfigError(f"--space {item!r} needs a parameter name and at least one value")
        if name in space:
            raise ConfigError(f"--space names {name!r} twice")
        try:  # a value twice would run (and rank) the same trial twice
            check_unique(values, f"--space {item!r}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        space[name] = values
    return space


def trials(method_key: str, space: dict[str, list[Any]]) -> list[Trial]:
    names = list(space)
    combos = list(itertools.product(*(space[n] for n in names))) or [()]
    return [Trial(f"{method_key}-t{i:02d}", dict(zip(names, combo))) for i, combo in enumerate(combos)]


def _find_method(data: dict[str, Any], key: str) -> MethodSpec:
    from bench.grid.spec import MethodSpec

    specs = [from_dict(MethodSpec, MethodSpec.coerce_config(entry), f"methods[{i}]")
             for i, entry in enumerate(data.get("methods") or [])]
    for spec in specs:
        if spec.key == key:
            return spec
    raise ConfigError(f"--method {key!r} is not a method of the config (its methods: {[s.key for s in specs]})")


def tuning_data(data: dict[str, Any], method_key: str, budget: int, space: dict[str, list[Any]],
                seeds: list[int] | None = None) -> tuple[dict[str, Any], list[Trial]]:
    """The raw grid of one search: one method entry per trial at ``budget``, on val."""
    from bench.grid.spec import GridConfig

    data = copy.deepcopy(data)
    spec = _find_method(data, method_key)
    base = spec.params_for(budget)
    found = trials(method_key, space)
    data["methods"] = [{"name": spec.name, "label": t.label, "params": {**base, **t.values}} for t in found]
    data["budgets"] = [budget]
    data["include_full"] = False
    if seeds is not None:
        data["method_seeds"] = seeds
    evaluation = data.setdefault("evaluation", {}) or {}
    evaluation["split"] = SPLIT
    data["evaluation"] = evaluation
    results_dir = data.get("results_dir", GridConfig.__dataclass_fields__["results_dir"].default)
    data["results_dir"] = str(Path(results_dir) / "tune" / f"{method_key}-b{budget}")
    return data, found


def check_trials(spec: MethodSpec, budget: int, found: list[Trial], items: list[str]) -> None:
    """Every ``--space`` name is a parameter of the method and every trial's values fit it; the
    errors name what was typed (``--space 'lr_imgg=[1]'``), not the trials' internal labels."""
    from bench.registry import get_method

    params_cls = get_method(spec.name).Params
    typed = {item.split("=", 1)[0].strip(): item for item in items}
    try:
        check_keys(params_cls, {name: None for name in typed})
    except ConfigError as exc:
        name = next(n for n in typed if repr(n) in str(exc))
        raise ConfigError(f"--space {typed[name]!r}: method {spec.name}: {exc}") from None
    for trial in found:
        try:
            from_dict(params_cls, {**spec.params_for(budget), **trial.values})
        except ConfigError as exc:
            values = ", ".join(f"{k}={v!r}" for k, v in trial.values.items())
            raise ConfigError(f"--space: the trial {values} (at {budget} pairs) is invalid: {exc}") from None


def rank(records: list[CellRecord], found: list[Trial]) -> list[dict[str, Any]]:
    """Trials ordered by mean val recall (records of other labels are ignored)."""
    by_label = {t.label: t for t in found}
    rows = []
    for label, trial in by_label.items():
        mine = [r for r in records if r.method == label]
        values = [s["metrics"]["mean"] for r in mine for s in r.per_seed]
        if any(r.eval_split != SPLIT for r in mine):
            raise RuntimeError(f"a tuning record of {label} was not evaluated on {SPLIT}")
        if values:
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
            rows.append({"label": label, "values": trial.values, "mean": mean, "std": std, "n": len(values)})
    return sorted(rows, key=lambda r: -r["mean"])


def run_tune(args: argparse.Namespace) -> int:
    file_raw = load_yaml(args.config)
    raw = apply_overrides(copy.deepcopy(file_raw), list(args.set))  # config errors before the heavy imports
    space = parse_space(args.space)
    from rich.console import Console
    from rich.table import Table

    from bench.grid.runner import GridRun
    from bench.grid.spec import build_blamed, build_grid, set_sources
    from bench.registry import load_plugins

    console = Console()
    load_plugins(args.plugin)
    summary: dict[str, Any] = {"config": str(args.config), "method": args.method, "split": SPLIT, "budgets": {}}
    no_winner: list[int] = []
    for budget in args.budget:
        _, found = tuning_data(raw, args.method, budget, space, args.method_seeds)
        check_trials(_find_method(raw, args.method), budget, found, args.space)
        # Its errors name the config file or the --set that brought the bad value in, as a run's do.
        grid = build_blamed(file_raw, set_sources(args.set), args.config,
                            lambda merged, b=budget: build_grid(tuning_grid_data(merged, args, space, b)))
        console.print(f"tuning {args.method} at {budget} pairs: {len(found)} combinations, evaluated on the "
                      f"[bold]{SPLIT}[/bold] split (evaluation.split forced to {SPLIT}; the test split is not read); "
                      f"records in {grid.results_dir}")
        run = GridRun(grid, plugins=args.plugin, progress=not args.no_progress).run()
        ranked = rank(run.results().records, found)
        table = Table(title=f"{args.method} at {budget} pairs: mean recall (%) on {SPLIT}, "
                            f"mean ± std over evaluation runs")
        for col in ("rank", "trial", *space, f"mean ({SPLIT})"):
            table.add_column(col)
        for i, row in enumerate(ranked, 1):
            table.add_row(str(i), row["label"], *(str(row["values"][k]) for k in space),
                          f"{row['mean']:.2f} ± {row['std']:.2f} (n={row['n']})")
        console.print(table)
        if run.failed:
            console.print(f"[red]{len(run.failed)} trial(s) failed[/red]: see {grid.results_dir}/records/*.failed.json")
        if not ranked:
            no_winner.append(budget)
            console.print(f"[red]no trial finished at {budget} pairs[/red]: nothing to rank (see "
                          f"{grid.results_dir}/records/*.failed.json)")
        else:
            best = ranked[0]
            snippet = yaml.safe_dump({"budget_params": {budget: best["values"]}}, default_flow_style=None).strip()
            console.print(f"best on {SPLIT}: {best['label']} {best['values']} -> {best['mean']:.2f} ± {best['std']:.2f}\n"
                          f"for the config (method {args.method}):\n{snippet}")
        summary["budgets"][budget] = {"results_dir": grid.results_dir, "ranked": ranked}
        write_json_atomic(Path(grid.results_dir) / "summary.json", {**summary, "budget": budget, "ranked": ranked})
    if args.summary:
        write_json_atomic(args.summary, summary)
    return 1 if no_winner else 0  # a search without a winner is no result to paste into a config


def tuning_grid_data(raw: dict[str, Any], args: argparse.Namespace, space: dict[str, list[Any]],
                     budget: int) -> dict[str, Any]:
    """The raw grid of one budget's search (:func:`tuning_data`), on ``--executor`` when given."""
    data, _ = tuning_data(raw, args.method, budget, space, args.method_seeds)
    if args.executor:
        data.setdefault("runner", {})["executor"] = args.executor
    return data


def add_tune_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    parser.add_argument("--config", default=default_config, help="the grid whose method is tuned")
    parser.add_argument("--method", required=True, help="a method name or label of the config")
    parser.add_argument("--budget", type=int, nargs="+", required=True, help="budget(s) to tune, each separately")
    parser.add_argument("--space", action="append", default=[], metavar="NAME=[V1,V2,...]",
                        help="a parameter and the values to try (repeat for a grid)")
    parser.add_argument("--method-seeds", type=int, nargs="+", default=None, help="override method_seeds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    parser.add_argument("--executor", choices=["ray", "local"], default=None)
    parser.add_argument("--summary", default=None, help="also write the summary of every budget to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run_tune)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_tune_arguments(parser, str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
