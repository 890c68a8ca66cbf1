"""Expert training throughput: pairs per second, seconds per epoch, buffer size, peak memory.

Trains ``--experts`` experts of a grid config's dataset + model + expert recipe (the same
``bench.distill.experts.train_expert`` a grid runs, into a temporary cache) and prints, per expert,
the wall time, training pairs per second, the size of its trajectory file and the peak RSS
(and CUDA memory on a GPU). Dataset preparation (decoding, caption embeddings) is done once
beforehand and not timed.

    python benchmarks/bench_experts.py --config configs/quickstart.yaml --experts 2 --threads 1
    python benchmarks/bench_experts.py --set experts.epochs=2 --set model.image_encoder.width=128
    python benchmarks/bench_experts.py --tower vit   # a random-weight ViT: full vs LoRA
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import torch  # noqa: E402

from bench.core.env import format_machine, machine_info, pick_device  # noqa: E402
from bench.core.measure import measure  # noqa: E402
from bench.data.datasets import PreparedDataset, prepare_dataset  # noqa: E402
from bench.distill.experts import train_expert  # noqa: E402
from bench.grid.spec import GridConfig, load_grid  # noqa: E402
from bench.models.student import ModelConfig, build_student  # noqa: E402
from benchmarks._towers import add_vit_arguments, describe_vit, tower_models  # noqa: E402


def bench_model(label: str, model: ModelConfig, grid: GridConfig, data: PreparedDataset, args: argparse.Namespace,
                device: torch.device, cache: str) -> None:
    """Train ``args.experts`` experts of ``model`` into ``cache``, timing each."""
    student = build_student(model, data.train.resolution, data.text_dim, 0)
    n_trainable = sum(p.numel() for p in student.trainable_parameters().values())
    n_total = sum(p.numel() for p in student.parameters())
    n_pairs = data.train.n_captions
    epochs = grid.experts.epochs
    print(f"{label}: trainable {n_trainable:,} of {n_total:,} parameters")
    rates = []
    for index in range(args.experts):
        with measure(device) as cost:
            start = time.perf_counter()
            path = train_expert(data, model, grid.experts, grid.evaluation.full_train, index, cache, device)
            seconds = time.perf_counter() - start
        rates.append(n_pairs * epochs / seconds)
        cuda = f", peak CUDA {cost.peak_cuda_mb:.0f} MiB" if cost.peak_cuda_mb is not None else ""
        print(f"  expert {index}: {seconds:7.1f} s = {seconds / epochs:6.1f} s/epoch, {rates[-1]:8.0f} pairs/s, "
              f"trajectory file {path.stat().st_size / 2**20:8.2f} MiB ({epochs + 1} snapshots), "
              f"peak RSS {cost.peak_rss_mb:.0f} MiB{cuda}")
    print(f"  mean throughput {sum(rates) / len(rates):.0f} pairs/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--tower", choices=["config", "vit"], default="config",
                        help="config: the config's model; vit: a random-weight ViT trained in full and with LoRA")
    parser.add_argument("--experts", type=int, default=2, help="how many experts to train (each timed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Ray task gets cpus_per_task)")
    parser.add_argument("--device", default=None, help="default: the config's device")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ViT's weights")
    add_vit_arguments(parser)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    overrides = list(args.set)
    if args.tower == "vit":  # the ViT's input size
        overrides.append(f"datasets.0.embedded.resolution={args.vit_resolution}")
    grid = load_grid(args.config, overrides)
    device = pick_device(args.device or grid.device)
    with tempfile.TemporaryDirectory(prefix="bench_experts_") as tmp:
        data = prepare_dataset(grid.datasets[0], grid.cache_dir, "cpu", False)  # the grid's dataset cache
        models = {grid.model.image_encoder.name: grid.model}
        if args.tower == "vit":
            models = tower_models(args, grid.model, Path(tmp) / "vit")
        recipe = grid.experts.train_config(grid.evaluation.full_train)
        print(format_machine(machine_info()))
        print(f"dataset {data.name}: {data.train.n_captions} pairs at {data.train.resolution} px; "
              f"{grid.experts.epochs} epochs x batch {recipe.batch_size}; device {device}; {args.threads} thread(s)"
              + (f"; {describe_vit(args)}" if args.tower == "vit" else ""))
        for label, model in models.items():
            bench_model(label, model, grid, data, args, device, str(Path(tmp) / "experts" / label.replace(" ", "_")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
