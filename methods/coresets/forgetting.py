"""forgetting: the most forgettable pairs of the proxy run first (Toneva et al., for pairs)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from bench.methods_api import MethodContext
from bench.registry import register
from methods.coresets._common import (
    CoresetMethod,
    proxy_rows,
    top,
)


def difficulty(forgetting_counts: np.ndarray, ever_learned: np.ndarray) -> np.ndarray:
    """(n,) int64 forgetting difficulty: a pair's forgetting count, and for a pair never learned
    one more than the largest count (never learned ranks above every count, as in Toneva et
    al., who give unlearned examples infinite forgetting). Checks the two arrays."""
    counts = np.asarray(forgetting_counts)
    learned = np.asarray(ever_learned)
    if counts.ndim != 1 or learned.shape != counts.shape:
        raise ValueError(f"forgetting_counts and ever_learned must be 1-D of one length, "
                         f"got {counts.shape} and {learned.shape}")
    if learned.dtype != np.bool_:
        raise ValueError(f"ever_learned must be boolean, got {learned.dtype}")
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError("forgetting_counts must be non-negative integers")
    if (counts[~learned] > 0).any():
        raise ValueError("a pair never learned cannot have been forgotten (are the arguments swapped?)")
    counts = counts.astype(np.int64)
    return np.where(learned, counts, (counts.max() if len(counts) else 0) + 1)


def select(forgetting_counts: np.ndarray, ever_learned: np.ndarray, budget: int,
           rng: np.random.Generator) -> np.ndarray:
    """Indices of ``budget`` pairs, most forgettable first: pairs never learned rank above every
    count, then pairs by forgetting count, descending (:func:`difficulty`).

    Tie-break: uniformly at random from ``rng`` (:func:`methods.coresets._common.rank`), so
    the result is deterministic per seed; counts tie massively (most pairs are forgotten 0 or
    1 times).
    """
    return top(difficulty(forgetting_counts, ever_learned), budget, rng)


@register("forgetting", "coreset", "most forgotten pairs during proxy training first (never-learned first)")
class ForgettingCoreset(CoresetMethod):
    uses_proxy = True

    def choose(self, ctx: MethodContext, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        proxy = ctx.proxy()
        counts = proxy_rows(ctx, proxy.forgetting_counts, "forgetting counts")
        learned = proxy_rows(ctx, proxy.ever_learned, "ever_learned")
        indices = select(counts, learned, budget, rng)
        picked_learned = indices[learned[indices]]
        summary = proxy.forgetting_summary()
        if summary["degenerate"]:
            warnings.warn(f"forgetting scores are degenerate: {summary['never_learned_fraction']:.0%} of the pairs were "
                          f"never learned in the {summary['epochs']}-epoch proxy run, so the selection is mostly a random "
                          "draw among them; train the proxy longer (proxy.epochs)", stacklevel=2)
        return indices, {
            "never_learned_selected": int(len(indices) - len(picked_learned)),
            "lowest_selected_count": int(counts[picked_learned].min()) if len(picked_learned) else None,
            "proxy_forgetting": summary,
        }
