"""Command line.

  python run_bench.py [run] [--config FILE] [--set key.path=value ...] [--plugin MODULE ...]
                      [--ray-address ADDR] [--executor ray|local] [--no-progress] [--dry-run] [--debug]
  python run_bench.py table RESULTS_DIR [--format markdown|latex|csv] [--reference FILE|paper]
                             [--select final|val|test]
  python run_bench.py methods [NAME] [--plugin MODULE ...]
  python run_bench.py protocols [--wide]
  python run_bench.py cache [--config FILE] [--set ...] [--prune]
  python run_bench.py export RESULTS_DIR OUT
  python run_bench.py recipes RESULTS_DIR [--dataset NAME] [--output FILE]

A problem the user can fix (a config value, a data file, a path, a plugin) is printed as one
``error: ...`` line on stderr with exit status 2; ``--debug`` shows its traceback as well.
Ctrl-C prints one line and exits with status 130. Heavy modules (torch, Ray, matplotlib,
pandas) are imported only once a command needs them, after the config file has been read.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def _console():
    from rich.console import Console

    # A pipe or log file gets a table wide enough for seven metric columns.
    return Console(width=None if sys.stdout.isatty() else 170)


def _load_grid(args: argparse.Namespace):
    """The config file first (its errors print before torch is imported), then the plugins (a
    config may name their methods), then the config validated with its overrides."""
    from bench.core.config import load_yaml

    raw = load_yaml(args.config)
    from bench.grid.spec import load_grid
    from bench.registry import load_plugins

    # A plugin file is named by its absolute path: Ray workers import it from another directory.
    args.plugin = [str(Path(p).expanduser().absolute()) if p.endswith(".py") else p for p in args.plugin]
    load_plugins(args.plugin)
    return load_grid(args.config, list(args.set), raw=raw, flags=_option_flags(args))


def _option_flags(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``--ray-address`` and ``--executor`` as labelled overrides of :func:`bench.grid.spec.load_grid`:
    an error they cause names the option typed, not a ``--set`` the user never wrote. The
    value goes in as a JSON string (valid YAML), so it is never read as another type."""
    import json

    flags = []
    if getattr(args, "ray_address", None):
        flags.append((f"--ray-address {args.ray_address!r}", f"runner.ray_address={json.dumps(args.ray_address)}"))
    if getattr(args, "executor", None):
        flags.append((f"--executor {args.executor!r}", f"runner.executor={json.dumps(args.executor)}"))
    return flags


def _run(args: argparse.Namespace) -> int:
    grid = _load_grid(args)
    if args.dry_run:
        return _dry_run(grid)
    from bench.commands.console import print_grid_results, print_tuning
    from bench.grid.runner import GridRun
    from bench.reports.outputs import write_reports

    console = _console()
    start = time.perf_counter()
    run = GridRun(grid, plugins=args.plugin, progress=not args.no_progress)
    tuned = None
    with run.locked():  # the reports too: a second run must not replace the records they show
        if grid.tuning is not None:  # phase 1: choose on val; the test split is read only after
            from bench.grid.tuning import annotate_records, tune_grid

            tuned = tune_grid(grid, args.plugin, progress=not args.no_progress, say=console.print)
            run.use_grid(tuned.grid)
            print_tuning(tuned, console)
        run.run()
        if tuned is not None:
            annotate_records(tuned, run.store, run.cells)
        wall = time.perf_counter() - start
        results = run.results()
        # Datasets of the grid that ran here before lose their tables and plots (not current).
        write_reports(grid.results_dir, [d.name for d in grid.datasets] + run.earlier_datasets, results)
    print_grid_results(results, console)
    console.print(
        f"{len(run.done)} cells run, {len(run.skipped)} already done, {len(run.failed)} failed; "
        f"wall time {wall:.1f} s; results in {grid.results_dir}"
    )
    if run.retired:
        console.print(f"{len(run.retired)} record(s) of an older recipe moved to {run.store.root / 'stale'}")
    if run.failed:
        console.print(f"tracebacks: {run.store.root / 'records'}/<cell>.failed.json")
    lost = run.lost_message()
    if lost:
        print(f"error: {lost}", file=sys.stderr)
    unchosen = [] if tuned is None else [g for g in tuned.groups if g.chosen is None]
    for group in unchosen:
        print(f"error: tuning {group.spec.key} at {group.budget} pairs on {group.dataset}: every trial failed; its test "
              f"cell was not run (see {run.store.root / 'tuning' / 'records'})", file=sys.stderr)
    return 1 if run.failed or lost or unchosen else 0


def _dry_run(grid) -> int:  # noqa: ANN001 - a GridConfig (imported late: torch)
    """``run --dry-run``: every cell, cached or to compute, and the experts and proxy runs to
    train; nothing is computed or written."""
    from bench.commands.dry_run import dry_run

    print("\n".join(dry_run(grid).lines(grid.name)), flush=True)
    return 0


def _methods(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bench.registry import all_methods, load_plugins

    load_plugins(args.plugin)
    if args.name:
        return _describe_method(args.name)
    table = Table(title="registered methods")
    for col in ("name", "kind", "description", "module"):
        table.add_column(col)
    for name, cls in all_methods().items():
        table.add_row(name, cls.kind, cls.description, cls.__module__)
    _console().print(table)
    return 0


def _describe_method(name: str) -> int:
    """``methods NAME``: the method's parameters with types and defaults, its search spaces."""
    from bench.commands.method_info import describe
    from bench.core.errors import UserError
    from bench.registry import UnknownMethodError, get_method

    try:
        cls = get_method(name)
    except UnknownMethodError as exc:
        raise UserError(str(exc)) from None
    print("\n".join(describe(cls)))
    return 0


def _protocols(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bench.protocol.presets import PRESETS

    if not args.wide:  # what each is and what it reports; --wide: every value and its source
        from bench.protocol.selection import SELECTION_LABELS

        table = Table(title="evaluation protocols (evaluation.protocol); --wide shows every value and its source")
        for col in ("name", "what it is", "epochs", "reports"):
            table.add_column(col, overflow="fold")
        for p in PRESETS.values():
            table.add_row(p.name, p.description.split(": ", 1)[0], str(p.train.get("epochs", "the grid's")),
                          SELECTION_LABELS.get(p.selection, p.selection))
        _console().print(table)
        return 0
    table = Table(title="evaluation protocols (evaluation.protocol)")
    for col in ("name", "overrides of evaluation.train", "learned lrs", "curve", "reports", "source of each value"):
        table.add_column(col, overflow="fold")
    for p in PRESETS.values():
        curve = "the grid's eval_every" if p.eval_every is None else f"every {p.eval_every} from epoch {p.eval_start}"
        table.add_row(p.name, ", ".join(f"{k}: {v}" for k, v in p.train.items()) or "none", p.learned_lrs, curve,
                      p.selection, "\n".join(f"{k}: {v}" for k, v in p.sources.items()) or p.description)
    _console().print(table)
    return 0


def _cache(args: argparse.Namespace) -> int:
    grid = _load_grid(args)
    from rich.table import Table

    from bench.commands.cache import KINDS, format_size, inventory, prune

    entries = inventory(grid)
    console = _console()
    table = Table(title=f"cache {grid.cache_dir} (referenced = read by grid {grid.name!r})")
    for col in ("kind", "dataset", "entries", "size", "referenced", "unreferenced"):
        table.add_column(col, justify="left" if col in ("kind", "dataset") else "right")
    groups = sorted({(e.kind, e.dataset) for e in entries},
                    key=lambda g: (KINDS.index(g[0]) if g[0] in KINDS else len(KINDS), g[1]))
    for kind, dataset in groups:
        group = [e for e in entries if (e.kind, e.dataset) == (kind, dataset)]
        used = sum(e.size for e in group if e.referenced)
        unused = sum(e.size for e in group if not e.referenced)
        label = kind if kind in KINDS else f"{kind} (kept)"
        table.add_row(label, dataset, str(len(group)), format_size(used + unused), format_size(used),
                      format_size(unused))
    console.print(table)
    stale = [e for e in entries if not e.referenced]
    for entry in stale:
        console.print(f"unreferenced {entry.kind} {format_size(entry.size)}: {entry.paths[0]}", soft_wrap=True)
    total = sum(e.size for e in stale)
    if args.prune:
        console.print(f"pruned {len(stale)} entries, {format_size(prune(grid, entries))} freed")
    elif stale:
        console.print(f"{len(stale)} unreferenced entries, {format_size(total)}: `--prune` removes them")
    return 0


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML grid (default: configs/quickstart.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import a method plugin (module or .py file)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = argparse.ArgumentParser(prog="run_bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", parents=[common], help="run a grid config (the default command)")
    _add_config_arguments(run)
    run.add_argument("--ray-address", default=None, help="join an existing Ray cluster")
    run.add_argument("--executor", choices=["ray", "local"], default=None, help="override runner.executor")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bars: a line per task started and finished (always so when stdout is a file)")
    run.add_argument("--dry-run", action="store_true",
                     help="list every cell as cached or to compute, and the experts and proxies to train; compute nothing")
    run.set_defaults(func=_run)

    from bench.commands.table import add_table_arguments

    add_table_arguments(sub.add_parser("table", parents=[common],
                                       help="render the paper-style tables of a results directory"))

    methods = sub.add_parser("methods", parents=[common],
                             help="list the registered methods; with NAME, one method's parameters and search space")
    methods.add_argument("name", nargs="?", default=None, metavar="NAME",
                         help="describe this method: its parameters with types and defaults, its search space")
    methods.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    methods.set_defaults(func=_methods)

    protocols = sub.add_parser("protocols", parents=[common], help="list the evaluation protocol presets")
    protocols.add_argument("--wide", "-v", action="store_true",
                           help="every training override, learned-lr rule, curve and the source of each value")
    protocols.set_defaults(func=_protocols)

    cache = sub.add_parser("cache", parents=[common],
                           help="list cache_dir per dataset and kind; what the config no longer reads")
    _add_config_arguments(cache)
    cache.add_argument("--prune", action="store_true", help="remove the entries the config does not read")
    cache.set_defaults(func=_cache)

    from bench.commands.export import add_export_arguments

    add_export_arguments(sub.add_parser("export", parents=[common],
                                        help="write every finished cell's set as a bundle (safetensors + JSON card)"))

    from bench.commands.recipes import add_recipes_arguments

    add_recipes_arguments(sub.add_parser("recipes", parents=[common],
                                         help="write the config that runs a results directory's recipes again"))

    from bench.commands.tune import add_tune_arguments

    add_tune_arguments(sub.add_parser("tune", parents=[common],
                                      help="choose a method's parameters per budget on the val split"), str(DEFAULT_CONFIG))
    return parser


#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    from bench.core.errors import UserError, console_warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    try:
        with console_warnings():
            return args.func(args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("interrupted; rerun the same command to resume (finished cells are kept)", file=sys.stderr)
        return INTERRUPTED
