"""Command line.

  python run_bench.py [run] [--config FILE] [--set key.path=value ...] [--plugin MODULE ...]
                      [--ray-address ADDR] [--executor ray|local] [--no-progress]
  python run_bench.py table RESULTS_DIR [--format markdown|latex|csv] [--reference FILE|paper]
  python run_bench.py methods [--plugin MODULE ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def _console():
    from rich.console import Console

    # A pipe or log file gets a table wide enough for seven metric columns.
    return Console(width=None if sys.stdout.isatty() else 170)


def _run(args: argparse.Namespace) -> int:
    from bench.config import ConfigError
    from bench.console import print_records
    from bench.grid import load_grid
    from bench.registry import load_plugins
    from bench.reports.outputs import write_reports
    from bench.runner import GridRun

    console = _console()
    try:
        load_plugins(args.plugin)
        overrides = list(args.set)
        if args.ray_address:
            overrides.append(f"runner.ray_address={args.ray_address}")
        if args.executor:
            overrides.append(f"runner.executor={args.executor}")
        grid = load_grid(args.config, overrides)
    except (ConfigError, ImportError) as exc:
        console.print(f"[red]error[/red] in {args.config}: {exc}")
        return 2
    start = time.perf_counter()
    run = GridRun(grid, plugins=args.plugin, progress=not args.no_progress).run()
    wall = time.perf_counter() - start
    records = write_reports(grid)
    print_records(records, console)
    console.print(
        f"{len(run.done)} cells run, {len(run.skipped)} already done, {len(run.failed)} failed; "
        f"wall time {wall:.1f} s; results in {grid.results_dir}"
    )
    for cell in run.failed:
        console.print(f"[red]failed[/red] {cell.id}: see {run.store.failure_path(cell)}")
    return 1 if run.failed else 0


def _methods(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bench.registry import all_methods, load_plugins

    load_plugins(args.plugin)
    table = Table(title="registered methods")
    for col in ("name", "kind", "description", "module"):
        table.add_column(col)
    for name, cls in all_methods().items():
        table.add_row(name, cls.kind, cls.description, cls.__module__)
    _console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run a grid config (the default command)")
    run.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML grid (default: configs/quickstart.yaml)")
    run.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    run.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import a method plugin (module or .py file)")
    run.add_argument("--ray-address", default=None, help="join an existing Ray cluster")
    run.add_argument("--executor", choices=["ray", "local"], default=None, help="override runner.executor")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)

    from bench.reports.cli import add_table_arguments

    add_table_arguments(sub.add_parser("table", help="render the paper-style tables of a results directory"))

    methods = sub.add_parser("methods", help="list the registered methods")
    methods.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    methods.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    return args.func(args)
