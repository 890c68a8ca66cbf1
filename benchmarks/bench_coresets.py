"""Time each coreset ``select`` and its peak extra memory on synthetic proxy features.

Features mimic the proxy's: Gaussian image half ++ text half, each half L2-normalised, float32.
Forgetting statistics: counts in 0..5, a tenth of the pairs never learned. Peak memory is the
tracemalloc peak during the call (numpy allocations; the features themselves are excluded).

    python benchmarks/bench_coresets.py --pairs 5000 --dim 2048 --budget 100
    python benchmarks/bench_coresets.py --flickr-scale   # also 145,000 pairs x 4608-d, budget 1000
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import numpy as np  # noqa: E402

from bench.core.env import format_machine, machine_info  # noqa: E402
from methods.coresets import forgetting, herding, kcenter  # noqa: E402
from methods.coresets import random as random_coreset  # noqa: E402

FLICKR_SCALE = (145_000, 4608, 1000)  # Flickr30K train captions, the paper's feature width


def synthetic_features(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    half = d // 2
    for start in range(0, n, 8192):  # normalise each half in place, chunk by chunk
        for block in (x[start:start + 8192, :half], x[start:start + 8192, half:]):
            block /= np.linalg.norm(block, axis=1, keepdims=True)
    return x


def measure(fn: Callable[[], np.ndarray]) -> tuple[float, float]:
    """(wall seconds, peak extra MiB) of one call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20


def bench(n: int, d: int, budget: int, seed: int) -> None:
    start = time.perf_counter()
    x = synthetic_features(n, d, seed)
    rng = np.random.default_rng(seed + 1)
    learned = rng.random(n) > 0.1
    counts = np.where(learned, rng.integers(0, 6, n), 0).astype(np.int64)
    print(f"\n{n} pairs x {d}-d float32 ({x.nbytes / 2**30:.2f} GiB), budget {budget} "
          f"(features made in {time.perf_counter() - start:.1f} s)")
    selectors = {
        "random": lambda: random_coreset.select(n, budget, np.random.default_rng(seed)),
        "herding": lambda: herding.select(x, budget, np.random.default_rng(seed)),
        "kcenter": lambda: kcenter.select(x, budget, np.random.default_rng(seed)),
        "forgetting": lambda: forgetting.select(counts, learned, budget, np.random.default_rng(seed)),
    }
    for name, fn in selectors.items():
        seconds, peak_mib = measure(fn)
        print(f"  {name:<10}  {seconds:8.3f} s  ({1000 * seconds / budget:7.2f} ms/pick)  "
              f"peak extra memory {peak_mib:8.1f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flickr-scale", action="store_true",
                        help="also run 145,000 pairs x 4608-d, budget 1000 (2.7 GiB features, minutes)")
    args = parser.parse_args()

    print(format_machine(machine_info()))
    bench(args.pairs, args.dim, args.budget, args.seed)
    if args.flickr_scale:
        bench(*FLICKR_SCALE, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
