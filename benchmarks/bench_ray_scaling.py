"""Grid wall time with 1 vs 2 (or more) concurrent Ray workers, and whether results agree.

Runs the same grid once per worker count (``runner.max_concurrent``), each from an empty
cache and results directory (so experts, the proxy and caption embeddings are part of every
run), on one Ray cluster started here (or ``--ray-address``). Prints the machine, the wall
time per run, the speed-up over the first count, per-job timings, and whether every cell's
metrics are identical across the runs (they must be: seeds, not scheduling, decide results).

The default grid is configs/quickstart.yaml scaled down (2,000 training pairs, 4 coresets +
distill-joint, 2 experts) so one run takes minutes on a laptop; ``--as-is`` runs the config
unchanged, ``--set`` adds overrides.

    python benchmarks/bench_ray_scaling.py --workers 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from bench.core.env import format_machine, machine_info  # noqa: E402
from bench.grid.runner import GridRun  # noqa: E402
from bench.grid.spec import load_grid  # noqa: E402
from bench.reports.records import load_records  # noqa: E402

SMALL = [
    "datasets.0.embedded.n_train_images=400", "datasets.0.embedded.n_val_images=50",
    "datasets.0.embedded.n_test_images=200", "evaluation.train.epochs=30", "evaluation.full_train.epochs=5",
    "proxy.epochs=2", "experts.n_experts=2",
    "methods=[random, herding, kcenter, forgetting, {name: distill-joint, params: {iterations: 40, "
    "syn_steps: 8, batch_syn: 50, syn_lr_init: 0.01, lr_lr: 1.0e-5, lr_img: 100, lr_txt: 100}}]",
]


def _cell_results(results_dir: Path) -> tuple[dict[str, list], dict[str, float]]:
    """Per finished cell: its per-seed metrics, and its method + evaluation seconds."""
    metrics, seconds = {}, {}
    for record in load_records(results_dir):
        metrics[record.cell_id] = [s["metrics"] for s in record.per_seed]
        seconds[record.cell_id] = record.method_cost["seconds"] + record.eval_cost["seconds"]
    return metrics, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--as-is", action="store_true", help="run the config unscaled")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--workdir", default=None, help="keep results and caches here (default: a temp dir)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ray_scaling_"))
    base = ([] if args.as_is else SMALL) + list(args.set) + ["runner.executor=ray"]
    if args.ray_address:
        base.append(f"runner.ray_address={args.ray_address}")
    print(format_machine(machine_info()))
    print(f"config {args.config}{'' if args.as_is else ' (scaled down)'}; work dir {workdir}")

    walls: dict[int, float] = {}
    metrics: dict[int, dict[str, list]] = {}
    for workers in args.workers:
        run_dir = workdir / f"workers{workers}"
        grid = load_grid(args.config, base + [
            f"runner.max_concurrent={workers}", f"results_dir={run_dir / 'results'}", f"cache_dir={run_dir / 'cache'}",
            f"name=scaling-{workers}",
        ])
        start = time.perf_counter()
        run = GridRun(grid, progress=False).run()
        walls[workers] = time.perf_counter() - start
        metrics[workers], cells = _cell_results(run_dir / "results")
        print(f"  {workers} worker(s): wall {walls[workers]:7.1f} s  ({len(run.done)} cells run, "
              f"{len(run.failed)} failed; sum of cell times {sum(cells.values()):.1f} s)")
        for cell_id, seconds in cells.items():
            print(f"      {cell_id:<40} {seconds:7.1f} s")
    first = args.workers[0]
    for workers in args.workers[1:]:
        print(f"  speed-up {workers} vs {first} worker(s): {walls[first] / walls[workers]:.2f}x")
    same = all(metrics[w] == metrics[first] for w in args.workers)
    print(f"  identical metrics across worker counts: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
