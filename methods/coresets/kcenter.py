"""kcenter: k-center greedy (farthest-first traversal) on the proxy pair features."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.methods_api import MethodContext
from bench.registry import register
from methods.coresets._common import (
    CoresetMethod,
    as_features,
    check_select_budget,
    proxy_rows,
    squared_norms,
)


def select(features: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``budget`` centres in selection order: the first uniformly at random from
    ``rng``, then repeatedly the pair farthest (Euclidean) from its nearest selected centre.

    One running-minimum squared-distance vector is kept (O(N) memory, never an N x N matrix);
    each new centre c updates it with ||x_i||^2 - 2 x_i . c + ||c||^2, one matrix-vector
    product in the features' dtype (no N x d copy) with float64 norms and minima. Selected
    pairs are masked out explicitly, so rounding can never pick one twice, and ties (e.g.
    duplicate rows) go to the lowest index.
    """
    x = as_features(features)
    n = x.shape[0]
    check_select_budget(budget, n)
    sq = squared_norms(x)
    chosen = np.empty(budget, dtype=np.int64)
    chosen[0] = rng.integers(n)
    nearest = np.full(n, np.inf)
    for t in range(1, budget):
        c = int(chosen[t - 1])
        dist = sq - 2.0 * (x @ x[c]) + sq[c]
        np.minimum(nearest, dist, out=nearest)
        nearest[chosen[:t]] = -np.inf  # cheap (t <= budget) and immune to rounding
        chosen[t] = int(np.argmax(nearest))  # first maximum: lowest index on ties
    return chosen


@register("kcenter", "coreset", "k-center greedy: farthest-first traversal of the proxy pair features")
class KCenterCoreset(CoresetMethod):
    uses_proxy = True
    def choose(self, ctx: MethodContext, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        indices = select(proxy_rows(ctx, ctx.proxy_features(), "features"), budget, rng)
        return indices, {"first_centre": int(indices[0])}
