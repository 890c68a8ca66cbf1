"""``run_bench.py recipes RESULTS_DIR``: the config that runs a results directory's recipes again
(:mod:`bench.grid.recipes`), printed or written to a file."""

from __future__ import annotations

import argparse
from datetime import date


def add_recipes_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``recipes`` arguments to ``parser`` and make :func:`recipes_command` its handler."""
    parser.add_argument("results_dir", help="results directory of a grid run (every piece of a split grid)")
    parser.add_argument("--dataset", help="the dataset whose recipes to write (needed when the records hold several)")
    parser.add_argument("--output", metavar="FILE", help="write the config to FILE instead of printing it")
    parser.set_defaults(func=recipes_command)
    return parser


def recipes_command(args: argparse.Namespace) -> int:
    import yaml

    from bench.core.io import write_text_atomic
    from bench.grid.recipes import RecipesError, recipes_config
    from bench.reports.records import load_records

    records = load_records(args.results_dir)
    datasets = sorted({r.dataset for r in records})
    dataset = args.dataset or (datasets[0] if len(datasets) == 1 else None)
    if dataset is None:
        raise RecipesError(f"{args.results_dir} holds records of {', '.join(datasets) or 'no dataset'}; "
                           "name one with --dataset")
    config = recipes_config(records, dataset)
    header = (f"# The recipes of {args.results_dir} (dataset {dataset}), written by `run_bench.py recipes` on "
              f"{date.today().isoformat()}.\n"
              "# Every method's parameters per budget as its records ran them (chosen on val where the grid was\n"
              "# tuned); no tuning section: this config runs these recipes as they are. On the same data its\n"
              "# cells are the records' cells (same hashes). On other data: --set 'datasets=[...]' and a\n"
              "# results_dir of its own (docs/regime.md, \"The same grid on real data\").\n")
    text = header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110)
    if args.output:
        write_text_atomic(args.output, text)
        n = sum(len(m.get("budget_params", {})) for m in config["methods"])
        print(f"wrote {args.output}: {len(config['methods'])} method(s), {n} (method, budget) recipe(s), "
              f"budgets {config['budgets']}{', full row' if config['include_full'] else ''}")
    else:
        print(text, end="")
    return 0
