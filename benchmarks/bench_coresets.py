"""Time each coreset's selection and its peak memory on synthetic proxy outputs.

Features mimic the proxy's: Gaussian image half ++ text half, each half L2-normalised, float32.
Forgetting statistics: counts in 0..5, a tenth of the pairs never learned. Gallery rows (for
el2n): one recorded epoch, random cosines to 128 gallery pairs, float16, as the proxy stores
them. Each selection is timed with what its method computes from the proxy's outputs (clip
scores, EL2N scores, the kNN graph), not the proxy itself. Memory, two ways: the tracemalloc
peak during the call (Python and numpy allocations only; FAISS's C++ allocations are not seen)
and the process's peak resident set (VmHWM, reset before each call through
/proc/self/clear_refs), given as the growth over the resident set before the call and as the
total, which includes the features and the interpreter.

    python benchmarks/bench_coresets.py --pairs 5000 --dim 2048 --budget 100
    python benchmarks/bench_coresets.py --flickr-scale   # also 145,000 pairs x 4608-d, budget 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import numpy as np  # noqa: E402

from bench.core.env import format_machine, machine_info  # noqa: E402
from bench.protocol.proxy import GalleryRows  # noqa: E402
from methods.coresets import (  # noqa: E402
    ccs,
    clip_score,
    el2n,
    facility_location,
    forgetting,
    herding,
    kcenter,
)
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


def gallery_rows(n: int, seed: int, members: int = 128) -> GalleryRows:
    """One epoch of random gallery cosines, shaped and typed as the proxy records them."""
    rng = np.random.default_rng(seed)
    gallery = np.sort(rng.choice(n, size=members, replace=False))
    positive = rng.uniform(-0.2, 0.9, (1, n)).astype(np.float32)
    rows = [(0.3 * rng.standard_normal((1, n, members), dtype=np.float32)).astype(np.float16) for _ in range(2)]
    return GalleryRows((1,), gallery, positive, *rows, logit_scale=1 / 0.07)


def _status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def measure(fn: Callable[[], np.ndarray]) -> tuple[float, float, float | None, float | None]:
    """(wall seconds, tracemalloc peak MiB, peak RSS growth MiB, peak RSS MiB) of one call."""
    rss_before = _status_kib("VmRSS") if _reset_peak_rss() else None
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    hwm = _status_kib("VmHWM") if rss_before is not None else None
    if hwm is None or rss_before is None:
        return seconds, peak / 2**20, None, None
    return seconds, peak / 2**20, (hwm - rss_before) / 1024, hwm / 1024


def bench(n: int, d: int, budget: int, seed: int, only: list[str] | None = None) -> None:
    start = time.perf_counter()
    x = synthetic_features(n, d, seed)
    rng = np.random.default_rng(seed + 1)
    learned = rng.random(n) > 0.1
    counts = np.where(learned, rng.integers(0, 6, n), 0).astype(np.int64)
    rows = gallery_rows(n, seed + 2)
    image_ids = np.arange(n) // 5
    print(f"\n{n} pairs x {d}-d float32 ({x.nbytes / 2**30:.2f} GiB), budget {budget} "
          f"(inputs made in {time.perf_counter() - start:.1f} s)")
    half = d // 2
    selectors: dict[str, Callable[[], np.ndarray]] = {
        "random": lambda: random_coreset.select(n, budget, np.random.default_rng(seed)),
        "herding": lambda: herding.select(x, budget, np.random.default_rng(seed)),
        "kcenter": lambda: kcenter.select(x, budget, np.random.default_rng(seed)),
        "forgetting": lambda: forgetting.select(counts, learned, budget, np.random.default_rng(seed)),
        "clip-score": lambda: clip_score.select(clip_score.scores(x[:, :half], x[:, half:]), budget,
                                                np.random.default_rng(seed), image_ids, 1),
        "el2n": lambda: el2n.select(el2n.proxy_scores(rows, None), budget, np.random.default_rng(seed)),
        "facility-location": lambda: facility_location.select(x, budget, np.random.default_rng(seed)),
        "ccs": lambda: ccs.select(forgetting.difficulty(counts, learned), budget, np.random.default_rng(seed)),
    }
    print(f"  {'method':<18} {'seconds':>8}  {'ms/pick':>8}  {'tracemalloc':>11}  {'RSS growth':>10}  {'peak RSS':>9}")
    for name, fn in selectors.items():
        if only and name not in only:
            continue
        seconds, traced, growth, peak = measure(fn)
        rss = "        n/a           n/a" if peak is None else f"{growth:7.0f} MiB  {peak:5.0f} MiB"
        print(f"  {name:<18} {seconds:8.2f}  {1000 * seconds / budget:8.2f}  {traced:7.0f} MiB  {rss}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flickr-scale", action="store_true",
                        help="also run 145,000 pairs x 4608-d, budget 1000 (2.7 GiB features, minutes)")
    parser.add_argument("--methods", nargs="+", metavar="NAME", help="only these coresets (default: all eight)")
    args = parser.parse_args()

    print(format_machine(machine_info()))
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} (1, 5, 15 min)")
    bench(args.pairs, args.dim, args.budget, args.seed, args.methods)
    if args.flickr_scale:
        bench(*FLICKR_SCALE, args.seed, args.methods)
        print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} (1, 5, 15 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
