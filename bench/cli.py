"""Command line: ``python run_bench.py [run] [--config FILE] [--set key=value ...]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench.config import ConfigError
    from bench.console import print_records
    from bench.experiment import load_experiment
    from bench.run import run_experiment

    # A pipe or log file gets a table wide enough for seven metric columns.
    console = Console(width=None if sys.stdout.isatty() else 130)
    try:
        cfg = load_experiment(args.config, args.set)
    except ConfigError as exc:
        console.print(f"[red]config error[/red] in {args.config}: {exc}")
        return 2
    start = time.perf_counter()
    records = run_experiment(cfg, progress=not args.no_progress)
    print_records(records, console)
    console.print(f"wall time {time.perf_counter() - start:.1f} s; records in {Path(cfg.results_dir) / 'records'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_bench.py", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run an experiment config (the default command)")
    run.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/quickstart.yaml)")
    run.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    return args.func(args)
