"""Time bench.retrieval.retrieval_metrics with the faiss and torch backends.

Random embeddings at a test-split size (default 5,000 images x 25,000 captions x 512-d);
captions are their image plus noise so recalls are neither 0 nor 100. Prints best-of-N and
median wall seconds per backend and checks that the two backends return identical numbers.

    python benchmarks/bench_retrieval.py --images 5000 --captions-per-image 5 --dim 512 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import torch  # noqa: E402

from bench.env import format_machine, machine_info  # noqa: E402
from bench.retrieval import retrieval_metrics  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.images, args.dim, generator=gen)
    text_to_image = torch.arange(args.images).repeat_interleave(args.captions_per_image)
    noise = 0.5 * args.dim**0.5 * torch.randn(text_to_image.numel(), args.dim, generator=gen)
    texts = images[text_to_image] + noise

    print(format_machine(machine_info()))
    print(f"{args.images} images x {texts.shape[0]} captions x {args.dim}-d, ks=(1, 5, 10), "
          f"best/median of {args.repeats}")
    results = {}
    for backend in ("faiss", "torch"):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[backend] = retrieval_metrics(images, texts, text_to_image, backend=backend)
            times.append(time.perf_counter() - start)
        print(f"  {backend:<5}  best {min(times):7.3f} s  median {statistics.median(times):7.3f} s")
    same = results["faiss"] == results["torch"]
    print("  metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in results["faiss"].items()))
    print(f"  faiss == torch: {same}")
    if not same:
        print(f"  torch metrics: {results['torch']}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
