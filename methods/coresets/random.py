"""random: ``budget`` pairs drawn uniformly without replacement."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.methods_api import MethodContext
from bench.registry import register
from methods.coresets._common import CoresetMethod, check_select_budget


def select(n_pairs: int, budget: int, rng: np.random.Generator) -> np.ndarray:
    """``budget`` distinct indices in [0, n_pairs), uniformly at random (order is random too)."""
    check_select_budget(budget, n_pairs)
    return rng.choice(n_pairs, size=budget, replace=False).astype(np.int64)


@register("random", "coreset", "uniform random pairs")
class RandomCoreset(CoresetMethod):
    def choose(self, ctx: MethodContext, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        return select(ctx.n_pairs, budget, rng), {}
