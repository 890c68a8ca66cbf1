"""Time bench.protocol.retrieval.retrieval_metrics with the faiss and torch backends.

Random embeddings at a test-split size (default 5,000 images x 25,000 captions x 512-d);
captions are their image plus noise so recalls are neither 0 nor 100. Prints best-of-N and
median wall seconds per backend (faiss and torch on CPU; faiss GPU and torch CUDA as well
where a GPU and a faiss GPU build are present) and checks that all return identical numbers.

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

from bench.core.env import format_machine, machine_info  # noqa: E402
from bench.protocol.retrieval import faiss_has_gpu, retrieval_metrics  # noqa: E402


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
    variants = {"faiss cpu": ("faiss", False), "torch cpu": ("torch", False)}
    if faiss_has_gpu():
        variants["faiss gpu"] = ("faiss", True)
    else:
        print("  faiss gpu: not measured (this faiss build has no GPU support or sees no GPU; "
              "swap faiss-cpu for a faiss GPU build on a GPU machine)")
    if torch.cuda.is_available():
        variants["torch cuda"] = ("torch", True)
    results = {}
    for label, (backend, use_gpu) in variants.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            results[label] = retrieval_metrics(images, texts, text_to_image, backend=backend, use_gpu=use_gpu)
            times.append(time.perf_counter() - start)
        print(f"  {label:<10}  best {min(times):7.3f} s  median {statistics.median(times):7.3f} s")
    reference = results["faiss cpu"]
    print("  metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in reference.items()))
    same = True
    for label, metrics in results.items():
        if label != "faiss cpu":
            agree = metrics == reference
            same &= agree
            print(f"  {label} == faiss cpu: {agree}" + ("" if agree else f"  ({metrics})"))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
