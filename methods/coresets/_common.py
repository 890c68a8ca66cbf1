"""What the coreset modules share: argument checks and the Method glue around a ``select``.

A coreset module defines a pure ``select(...) -> indices`` and a :class:`CoresetMethod`
subclass whose ``choose`` fetches the inputs from the context and calls it; budget check,
seeding, subsetting and the output record live here once.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from bench.methods_api import Method, MethodContext, MethodOutput, check_budget

# Elements per chunk of the finiteness check (a 4 MB boolean temporary).
_CHUNK_ELEMENTS = 1 << 22


def check_select_budget(budget: int, pool_size: int) -> None:
    """``select`` functions accept 1 <= budget <= pool size; the message names both numbers."""
    if budget <= 0 or budget > pool_size:
        raise ValueError(f"budget {budget} must be between 1 and the pool size {pool_size}")


def as_features(features: np.ndarray) -> np.ndarray:
    """A 2-D finite float32/float64 array (other dtypes become float64); never copies float input."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n_pairs, d), got shape {features.shape}")
    if features.dtype not in (np.float32, np.float64):
        features = features.astype(np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, features.shape[1]))
    for start in range(0, features.shape[0], step):  # chunked: no N x d boolean temporary
        if not np.isfinite(features[start:start + step]).all():
            raise ValueError("features contain NaN or infinite values")
    return features


def squared_norms(features: np.ndarray) -> np.ndarray:
    """(n,) squared row norms accumulated in float64 (einsum casts in small buffers: no N x d copy)."""
    return np.einsum("ij,ij->i", features, features, dtype=np.float64)


def as_scores(scores: np.ndarray, what: str = "scores") -> np.ndarray:
    """A 1-D finite numeric array (one score per pair); ``what`` names it in the error."""
    scores = np.asarray(scores)
    if scores.ndim != 1 or not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"{what} must be a 1-D numeric array, got {scores.dtype} of shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return scores


def rank(scores: np.ndarray, rng: np.random.Generator, descending: bool = True) -> np.ndarray:
    """Every index, by score (highest first when ``descending``), ties in a uniformly random
    order from ``rng`` (a random permutation is the last sort key). Breaking ties by index
    instead would favour the start of the file, and integer scores tie massively."""
    scores = as_scores(scores)
    tie_break = rng.permutation(scores.shape[0])
    key = -scores.astype(np.float64) if descending else scores.astype(np.float64)
    return np.lexsort((tie_break, key)).astype(np.int64)


def top(scores: np.ndarray, budget: int, rng: np.random.Generator, descending: bool = True) -> np.ndarray:
    """The first ``budget`` indices of :func:`rank`: the highest (or lowest) scores."""
    order = rank(scores, rng, descending)
    check_select_budget(budget, order.shape[0])
    return order[:budget]


def proxy_rows(ctx: MethodContext, array: np.ndarray, what: str) -> np.ndarray:
    """The proxy array, checked to have one row per training pair of the context."""
    if len(array) != ctx.n_pairs:
        raise ValueError(f"proxy {what} has {len(array)} rows but the training set has {ctx.n_pairs} pairs")
    return array


class CoresetMethod(Method):
    """Base of the coreset methods: a subclass implements only :meth:`choose`."""

    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        check_budget(budget, ctx.n_pairs)
        rng = np.random.default_rng(seed)
        indices, info = self.choose(ctx, budget, rng)
        indices = np.asarray(indices, dtype=np.int64)
        return MethodOutput(pairs=ctx.real_subset(indices), info={"pool_size": ctx.n_pairs, **info})

    @abstractmethod
    def choose(self, ctx: MethodContext, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """Selected pair indices (in selection order) and small JSON-serialisable facts."""
