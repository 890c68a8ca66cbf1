"""``run_bench.py export RESULTS_DIR OUT``: every finished cell's set as a portable bundle.

Torch and safetensors are imported inside :func:`export_command`, so building the top-level
parser stays fast for every other subcommand.
"""

from __future__ import annotations

import argparse


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``export`` arguments to ``parser`` and make :func:`export_command` its handler."""
    parser.add_argument("results_dir", help="results directory of a grid run")
    parser.add_argument("out", help="directory to write <cell>.safetensors + <cell>.json into (created if needed)")
    parser.set_defaults(func=export_command)
    return parser


def export_command(args: argparse.Namespace) -> int:
    from bench.reports.export import export_sets

    result = export_sets(args.results_dir, args.out)
    for cell, why in result.skipped.items():
        print(f"  not exported: {cell} ({why})")
    print(f"exported {len(result.written)} set(s) to {args.out} (<cell>.safetensors + <cell>.json; "
          "<dataset>.methods.yaml lists from-file entries reading them)")
    return 0
