"""herding: greedy mean matching on the proxy pair features."""

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
    """Indices of ``budget`` pairs in selection order, chosen greedily so that after each step
    the mean of the selected features is as CLOSE as possible to the mean of all features.

    Closest, not farthest: one well-known coreset library takes the argmax here, which picks
    the candidates that pull the mean away, i.e. outliers; this is the herding of Welling (2009)
    / Chen et al. (2010).

    With S the float64 running sum of the t selected rows and mu the pool mean, adding x_i
    gives mean (S + x_i) / (t + 1), whose squared distance to mu is
    ||target - x_i||^2 / (t + 1)^2 with target = (t + 1) mu - S. Each step therefore scores
    every candidate with ||x_i||^2 - 2 x_i . target (the ||target||^2 term is shared), one
    matrix-vector product: O(N d) time per step and O(N) extra memory. The product runs in the
    features' dtype (float32 features stay float32, no N x d copy); norms, sums and scores are
    float64. Ties go to the lowest index, so the result is deterministic; ``rng`` is unused and
    only there because every coreset ``select`` shares the signature.
    """
    del rng  # deterministic rule; see the docstring
    x = as_features(features)
    n = x.shape[0]
    check_select_budget(budget, n)
    sq = squared_norms(x)
    mu = x.sum(axis=0, dtype=np.float64) / n  # buffered cast: no N x d float64 copy
    running = np.zeros_like(mu)
    chosen = np.empty(budget, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    for t in range(budget):
        target = (t + 1) * mu - running
        scores = sq - 2.0 * (x @ target.astype(x.dtype))
        scores[taken] = np.inf
        i = int(np.argmin(scores))  # first minimum: lowest index on ties
        chosen[t], taken[i] = i, True
        running += x[i]
    return chosen


@register("herding", "coreset", "greedy herding: add the pair bringing the selected mean closest to the pool mean")
class HerdingCoreset(CoresetMethod):
    uses_proxy = True
    def choose(self, ctx: MethodContext, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        features = proxy_rows(ctx, ctx.proxy_features(), "features")
        indices = select(features, budget, rng)
        gap = features[indices].mean(axis=0, dtype=np.float64) - features.mean(axis=0, dtype=np.float64)
        return indices, {"mean_gap": float(np.linalg.norm(gap))}
