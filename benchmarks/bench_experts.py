"""Expert training throughput: pairs per second, seconds per epoch, buffer size, peak memory.

Trains ``--experts`` experts of a grid config's dataset + model + expert recipe (the same
``bench.experts.train_expert`` a grid runs, into a temporary cache) and prints, per expert,
the wall time, training pairs per second, the size of its trajectory file and the peak RSS
(and CUDA memory on a GPU). Dataset preparation (decoding, caption embeddings) is done once
beforehand and not timed.

    python benchmarks/bench_experts.py --config configs/quickstart.yaml --experts 2 --threads 1
    python benchmarks/bench_experts.py --set experts.epochs=2 --set model.image_encoder.width=128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import torch  # noqa: E402

from bench.data.datasets import prepare_dataset  # noqa: E402
from bench.env import format_machine, machine_info, pick_device  # noqa: E402
from bench.experts import train_expert  # noqa: E402
from bench.grid import load_grid  # noqa: E402
from bench.measure import measure  # noqa: E402
from bench.models.student import build_student  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--experts", type=int, default=2, help="how many experts to train (each timed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Ray task gets cpus_per_task)")
    parser.add_argument("--device", default=None, help="default: the config's device")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    grid = load_grid(args.config, list(args.set))
    device = pick_device(args.device or grid.device)
    data_cfg = grid.datasets[0]
    with tempfile.TemporaryDirectory(prefix="bench_experts_") as tmp:
        data = prepare_dataset(data_cfg, grid.cache_dir, "cpu", False)  # the grid's dataset cache
        n_pairs = data.train.n_captions
        student = build_student(grid.model, data.train.resolution, data.text_dim, 0)
        params = student.trainable_parameters()
        n_trainable = sum(p.numel() for p in params.values())
        n_total = sum(p.numel() for p in student.parameters())
        recipe = grid.experts.train_config(grid.evaluation.full_train)
        print(format_machine(machine_info()))
        print(f"dataset {data.name}: {n_pairs} pairs at {data.train.resolution} px; image encoder "
              f"{grid.model.image_encoder.name}; trainable {n_trainable:,} of {n_total:,} parameters; "
              f"{grid.experts.epochs} epochs x batch {recipe.batch_size}; device {device}; {args.threads} thread(s)")
        rates = []
        for index in range(args.experts):
            with measure(device) as cost:
                start = time.perf_counter()
                path = train_expert(data, grid.model, grid.experts, grid.evaluation.full_train, index, tmp, device)
                seconds = time.perf_counter() - start
            rate = n_pairs * grid.experts.epochs / seconds
            rates.append(rate)
            cuda = f", peak CUDA {cost.peak_cuda_mb:.0f} MiB" if cost.peak_cuda_mb is not None else ""
            print(f"  expert {index}: {seconds:7.1f} s = {seconds / grid.experts.epochs:6.1f} s/epoch, "
                  f"{rate:8.0f} pairs/s, trajectory file {path.stat().st_size / 2**20:7.1f} MiB "
                  f"({grid.experts.epochs + 1} snapshots), peak RSS {cost.peak_rss_mb:.0f} MiB{cuda}")
        print(f"  mean throughput {sum(rates) / len(rates):.0f} pairs/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
