"""Time and peak memory of each stage of a grid, from its config, in one process.

What the paper's regime (145,000 training pairs) costs, stage by stage, so that the stage that
dominates can be named: data generation, caption encoding (train, val, test), the frozen image
tower's features of the training split (what every trainer computes once), the expert
trajectories, the proxy run, each coreset's selection at one budget, one distillation cell
(its method) and one evaluation (the grid's evaluation of that cell's set, every evaluation seed,
with the grid's curves). Experts and proxy are read from ``cache_dir`` when they are there:
point ``--cache-dir`` at an empty directory to measure the one-time setup (and then let the
grid use that directory, so the work is not done twice). Caption encoding runs with every torch
thread, as in the grid's driver; every later stage with the grid's ``runner.cpus_per_task``, as
in a grid worker, so what it leaves in ``cache_dir`` is bit for bit what the grid would train.
The stages run one after another in one process: on a machine with S task slots the grid runs
S experts (and the proxy) at once.

Memory: the process's resident set, sampled every 20 ms during the stage (bench.core.measure),
given as the stage's peak and its growth over the resident set at its start, and the process's
high-water mark at the end (getrusage). The machine and its load (the 1-minute load average at
the start and end) are printed with the numbers: the machine is shared, and a stage's time on
a busy machine is not its time on an idle one.

    python benchmarks/bench_stages.py --config configs/embedded_flickr.yaml --cache-dir /tmp/empty
    python benchmarks/bench_stages.py --config configs/embedded_full.yaml --distill mdm --budget 100
    python benchmarks/bench_stages.py --config configs/embedded_flickr.yaml --only data,captions,tower
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

STAGES = ("data", "captions", "tower", "experts", "proxy", "coresets", "distill", "evaluation")


def load_average() -> float:
    return os.getloadavg()[0]


def finish(rows: list[dict], args: argparse.Namespace, start_load: float) -> int:
    """Print the total and the process's peak; write the JSON when asked."""
    from bench.core.env import machine_info

    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = sum(r["seconds"] for r in rows)
    print(f"total {total:.1f} s; process peak resident set {hwm:.0f} MB; load average (1 min) at end {load_average():.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "config": args.config, "overrides": args.set,
                                               "load_start": start_load, "load_end": load_average(), "stages": rows,
                                               "total_seconds": round(total, 1), "peak_rss_mb": round(hwm),
                                               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                              indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/embedded_flickr.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    parser.add_argument("--cache-dir", help="cache directory (default: the config's cache_dir)")
    parser.add_argument("--budget", type=int, default=100, help="budget of the coreset selections and the distillation cell")
    parser.add_argument("--coresets", default="all", help="comma-separated coreset names of the grid, or 'all' or 'none'")
    parser.add_argument("--distill", default="distill-joint", help="the distillation method of the cell ('none': skip)")
    parser.add_argument("--only", help=f"comma-separated stages to run (of {', '.join(STAGES)}; a later stage needs the data)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    start_load = load_average()
    import numpy as np
    import torch

    from bench.core.env import format_machine, machine_info, pick_device
    from bench.core.measure import measure
    from bench.data.datasets import PreparedDataset, load_dataset
    from bench.data.text_encoder import TextEncoder, cached_caption_embeddings, model_identity
    from bench.distill.experts import ensure_experts
    from bench.grid.cell import evaluate_variants, load_proxy
    from bench.grid.spec import Cell, load_grid, resolve_cell
    from bench.methods_api import MethodContext
    from bench.models.student import build_student, tower_features
    from bench.registry import discover

    discover()
    overrides = list(args.set) + ([f"cache_dir={args.cache_dir}"] if args.cache_dir else [])
    grid = load_grid(args.config, overrides)
    stages = STAGES if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    device = pick_device(grid.device)
    cfg = grid.datasets[0]
    cache = Path(grid.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def record(stage: str, cost, **extra) -> None:  # noqa: ANN001
        row = {"stage": stage, "seconds": round(cost.seconds, 2), "peak_rss_mb": round(cost.peak_rss_mb),
               "growth_mb": round(cost.peak_rss_mb - cost.baseline_rss_mb), "load1": round(load_average(), 2), **extra}
        rows.append(row)
        print(f"{stage:<28} {row['seconds']:>9.1f} s  peak {row['peak_rss_mb']:>6} MB  (+{row['growth_mb']} MB)  "
              f"load {row['load1']:.2f}  {json.dumps(extra) if extra else ''}", flush=True)

    print(f"machine: {format_machine(machine_info())}; load average (1 min) at start {start_load:.2f}")
    print(f"config: {args.config} {' '.join(overrides)}; cache_dir {cache}; device {device}", flush=True)

    with measure() as cost:
        dataset = load_dataset(cfg, cache)
    record("data generation", cost, train_images=dataset.train.n_images, train_pairs=dataset.train.n_captions)

    if set(stages) <= {"data"}:  # the generation alone (e.g. rendered, then read from the pixel cache)
        return finish(rows, args, start_load)
    encoder = TextEncoder(cfg.text_encoder, "cpu")
    identity = model_identity(cfg.text_encoder)
    text_emb = {}
    for split in ("train", "val", "test"):
        with measure() as cost:
            text_emb[split] = cached_caption_embeddings(cfg.text_encoder, dataset.split(split).captions, cache, "cpu",
                                                        False, encoder=encoder, label=f"{dataset.name}-{split}",
                                                        identity=identity)
        record(f"captions {split}", cost, captions=int(text_emb[split].shape[0]))
    del encoder
    data = PreparedDataset(dataset, text_emb, identity)
    # From here on the grid's workers' thread count (runner.cpus_per_task): a trainer's result
    # depends on it in its last bits, and the experts and proxy left in cache_dir must be the
    # ones the grid itself would train. Caption vectors do not depend on it (the driver encodes
    # them with every thread).
    torch.set_num_threads(grid.runner.cpus_per_task)
    print(f"torch threads from here on: {torch.get_num_threads()} (runner.cpus_per_task, as a grid worker)", flush=True)

    if "tower" in stages:
        student = build_student(grid.model, cfg.resolution, data.text_dim, 0)
        with measure() as cost:
            features = tower_features(student, data.train.images, device)
        record("tower features (train)", cost, shape=list(features.shape))
        del features, student

    if "experts" in stages:
        with measure() as cost:
            buffer = ensure_experts(data, grid.model, grid.experts, grid.evaluation.full_train, cache, device)
        record("experts", cost, n_experts=grid.experts.n_experts, epochs=grid.experts.epochs,
               buffer_mb=round(buffer.size_bytes() / 2**20))
        del buffer

    seed = grid.method_seeds[0]
    if "proxy" in stages:
        with measure() as cost:
            proxy = load_proxy(grid, data, seed, device, False)
        record("proxy", cost, features=list(np.shape(proxy.features)))
        del proxy

    def context() -> MethodContext:
        g = grid

        def experts():  # noqa: ANN202
            from bench.distill.experts import open_buffer
            return open_buffer(data, g.model, g.experts, g.evaluation.full_train, cache)
        return MethodContext(data, g.model, device, cache, lambda: load_proxy(g, data, seed, device, False),
                             False, experts)

    def run_cell(name: str):  # noqa: ANN202
        spec = next(m for m in grid.methods if m.key == name)
        resolved = resolve_cell(grid, Cell(cfg.name, spec.key, args.budget, seed))
        method = resolved.method_cls(resolved.params)
        ctx = context()
        if resolved.method_cls.uses_proxy:
            ctx.proxy()  # outside the timing, as a cell does
        with measure(device) as cost:
            output = method.run(ctx, args.budget, seed)
        return output, cost, resolved.method_cls.kind

    if "coresets" in stages and args.coresets != "none":
        from bench.registry import get_method

        names = [m.key for m in grid.methods if get_method(m.name).kind == "coreset"]
        if args.coresets != "all":
            names = [n for n in names if n in args.coresets.split(",")]
        for name in names:
            _, cost, _ = run_cell(name)
            record(f"coreset {name} b{args.budget}", cost)

    output = None
    if "distill" in stages and args.distill != "none":
        output, cost, _ = run_cell(args.distill)
        record(f"distill {args.distill} b{args.budget}", cost)

    if "evaluation" in stages:
        if output is None:
            g = torch.Generator().manual_seed(0)
            from bench.methods_api import MethodOutput
            output = MethodOutput(data.train_pairs(torch.randperm(data.train.n_captions, generator=g)[:args.budget]))
        with measure(device) as cost:
            evaluate_variants(grid, data, output, False, device, False, "bench")
        record(f"evaluation b{args.budget}", cost, seeds=len(grid.evaluation.seeds),
               epochs=grid.evaluation.train.epochs, eval_every=grid.evaluation.eval_every)

    return finish(rows, args, start_load)

if __name__ == "__main__":
    raise SystemExit(main())
