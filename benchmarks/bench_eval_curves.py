"""What evaluation curves cost: the evaluation of fixed sets with and without curves.

Evaluates random real subsets of the embedded training split (100, 200, 500 and 1,000 pairs)
and the whole split with the grid's evaluation recipe and seeds (default: the embedded_full
recipe), once plainly and once with ``evaluation.eval_every`` curves on val and test, and
prints the wall seconds of each and their ratio, with the machine. One torch thread, as a grid
task has. Every set and seed is evaluated the same way in both passes, so the ratio is the
price of the curves.

    python benchmarks/bench_eval_curves.py --every 10
    python benchmarks/bench_eval_curves.py --plain-only     # only the plain pass (e.g. on an older checkout:
                                                            #  PYTHONPATH=<checkout> python <this script> --plain-only)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:  # an older checkout on PYTHONPATH is measured as it is
    import bench  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.core.env import format_machine  # noqa: E402
from bench.grid.cell import prepared  # noqa: E402
from bench.grid.spec import load_grid  # noqa: E402
from bench.protocol import evaluate  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "embedded_full.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--every", type=int, default=10, help="eval_every of the curves")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 500, 1000])
    parser.add_argument("--plain-only", action="store_true", help="skip the pass with curves")
    args = parser.parse_args()
    torch.set_num_threads(1)
    grid = load_grid(args.config, args.set)
    data = prepared(grid, grid.datasets[0].name)
    ev, device = grid.evaluation, torch.device("cpu")
    split = data.dataset.split(ev.split)
    rng = np.random.default_rng(0)
    sets = {b: data.train_pairs(torch.as_tensor(np.sort(rng.choice(data.train.n_captions, b, replace=False))))
            for b in args.budgets}
    sets["full"] = data.train_pairs()
    print(format_machine())
    print(f"{args.config}: {ev.split} split, seeds {list(ev.seeds)}, curves every {args.every} epochs on val and test")
    totals = {"plain": 0.0, "curves": 0.0}
    for name, pairs in sets.items():
        recipe = ev.full_train if name == "full" else ev.train
        row = {}
        for mode in ("plain",) if args.plain_only else ("plain", "curves"):
            kwargs = {}
            if mode == "curves":
                splits = {s: (data.dataset.split(s), data.text_emb[s]) for s in ("val", "test")}
                kwargs["curve"] = evaluate.CurvePlan(evaluate.curve_epochs(args.every, recipe.epochs), splits)
            start = time.perf_counter()
            evaluate.evaluate_pair_set(pairs, grid.model, recipe, split, data.text_emb[ev.split], ev.seeds, device,
                                       **kwargs)
            row[mode] = time.perf_counter() - start
            totals[mode] += row[mode]
        ratio = f"  ratio {row['curves'] / row['plain']:.2f}x" if "curves" in row else ""
        print(f"{name:>6} pairs ({recipe.epochs} epochs): " + "  ".join(f"{k} {v:6.2f} s" for k, v in row.items())
              + ratio, flush=True)
    ratio = f"  ratio {totals['curves'] / totals['plain']:.2f}x" if not args.plain_only else ""
    print(f" total: plain {totals['plain']:.2f} s" + ("" if args.plain_only else f"  curves {totals['curves']:.2f} s")
          + ratio)


if __name__ == "__main__":
    main()
