"""ccs: coverage-centric coreset selection (Zheng et al., ICLR 2023).

Score-based pruning that keeps only the hardest examples collapses at high pruning rates: it
covers a thin band of the difficulty range. CCS drops the hardest ``beta`` fraction (often
mislabelled or unlearnable), cuts the rest into ``k`` strata of equal score width and spends
the budget as evenly as the strata allow (Algorithm 1 of the paper: the smallest stratum first,
each getting its share of what is left), drawing uniformly at random within each stratum.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bench.data.datasets import PreparedDataset
from bench.methods_api import MethodContext
from bench.protocol.proxy import ProxyConfig
from bench.registry import register
from methods.coresets import el2n, forgetting
from methods.coresets._common import (
    CoresetMethod,
    as_scores,
    check_select_budget,
    proxy_rows,
    rank,
)


@dataclass(frozen=True)
class CcsParams:
    """score: the difficulty, ``forgetting`` (the proxy's forgetting counts, never learned the
    hardest) or ``el2n`` (over ``el2n_epochs``, as the el2n coreset; None: every recorded
    epoch). beta: the hardest fraction pruned first, in [0, 1). strata: k, at least 1 (the
    paper's 50)."""

    score: Literal["forgetting", "el2n"] = "forgetting"
    beta: float = 0.1
    strata: int = 50
    el2n_epochs: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.score not in ("forgetting", "el2n"):
            raise ValueError(f"score must be 'forgetting' or 'el2n', got {self.score!r}")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {self.beta}")
        if self.strata < 1:
            raise ValueError(f"strata must be at least 1, got {self.strata}")
        el2n.check_epochs(self.el2n_epochs, "el2n_epochs")
        if self.el2n_epochs is not None and self.score != "el2n":
            raise ValueError("el2n_epochs is read only with score: el2n")


def strata(scores: np.ndarray, k: int) -> np.ndarray:
    """(n,) the stratum 0..k-1 of each score: k bins of equal width over [min, max], the
    maximum in the last one (all scores equal: all in stratum 0)."""
    scores = as_scores(scores).astype(np.float64)
    low, high = float(scores.min()), float(scores.max())
    if high == low:
        return np.zeros(scores.shape[0], dtype=np.int64)
    return np.minimum(((scores - low) / (high - low) * k).astype(np.int64), k - 1)


def allocate(sizes: np.ndarray, budget: int) -> np.ndarray:
    """(k,) how many pairs each stratum gives: smallest stratum first, each takes
    min(its size, floor(left / strata left)) (Zheng et al., Algorithm 1)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if budget > sizes.sum():
        raise ValueError(f"budget {budget} is more than the {int(sizes.sum())} pairs in the strata")
    counts = np.zeros_like(sizes)
    left = budget
    for done, s in enumerate(np.argsort(sizes, kind="stable")):
        counts[s] = min(sizes[s], left // (len(sizes) - done))
        left -= counts[s]
    if left:  # cannot happen: the largest stratum comes last and takes all that is left
        raise AssertionError(f"allocation left {left} of budget {budget} (sizes {sizes.tolist()})")
    return counts


def select(difficulty: np.ndarray, budget: int, rng: np.random.Generator, beta: float = 0.1,
           k: int = 50) -> np.ndarray:
    """Indices of ``budget`` pairs: the floor(beta * n) hardest pruned (ties in a random order
    from ``rng``), the rest in ``k`` equal-width strata of difficulty, each stratum's
    allocated count drawn uniformly without replacement from ``rng``; ordered by stratum."""
    order = rank(difficulty, rng)  # hardest first
    n = order.shape[0]
    check_select_budget(budget, n)
    kept = np.sort(order[int(np.floor(beta * n)):])
    if budget > len(kept):
        raise ValueError(f"budget {budget} is more than the {len(kept)} pairs left after pruning the hardest "
                         f"beta={beta} of {n}")
    if k > len(kept):  # kept as given (equal-width strata, many empty), said once
        warnings.warn(f"ccs: strata {k} is more than the {len(kept)} pairs left after pruning; at most {len(kept)} "
                      "strata hold a pair and the budget is spread over those", stacklevel=2)
    labels = strata(np.asarray(difficulty)[kept], k)
    counts = allocate(np.bincount(labels, minlength=k), budget)
    picks = [rng.choice(kept[labels == s], size=int(c), replace=False) for s, c in enumerate(counts) if c]
    return np.concatenate(picks).astype(np.int64)


@register("ccs", "coreset", "coverage-centric selection: prune the hardest, then sample evenly across difficulty strata")
class CcsCoreset(CoresetMethod):
    Params = CcsParams
    uses_proxy = True
    # The pruning fraction decides most (beta 0.3 on the embedded set, 0.0 on a real set's
    # val); the score and the strata after it.
    default_search = {"beta": [0.0, 0.1, 0.2, 0.3, 0.5], "score": ["forgetting", "el2n"], "strata": [10, 50]}

    @classmethod
    def proxy_problem(cls, params: CcsParams, proxy: ProxyConfig) -> str | None:
        if params.score != "el2n":
            return None
        return el2n.gallery_problem(params.el2n_epochs, tuple(proxy.gallery_epochs), "el2n_epochs")

    @classmethod
    def budget_problem(cls, params: CcsParams, budget: int, data: PreparedDataset) -> str | None:
        n = data.train.n_captions
        left = n - int(np.floor(params.beta * n))
        if budget > left:
            return (f"budget {budget} is more than the {left} pairs left after pruning the hardest beta={params.beta} "
                    f"of {n}; lower beta or the budget")
        return None

    def choose(self, ctx: MethodContext, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        p, proxy = self.params, ctx.proxy()
        if p.score == "el2n":
            difficulty = el2n.proxy_scores(proxy.gallery_rows(), p.el2n_epochs)
        else:
            difficulty = forgetting.difficulty(proxy.forgetting_counts, proxy.ever_learned)
        difficulty = proxy_rows(ctx, difficulty, f"{p.score} scores")
        indices = select(difficulty, budget, rng, p.beta, p.strata)
        return indices, {"pruned": int(np.floor(p.beta * ctx.n_pairs)),
                         "difficulty_selected_max": float(difficulty[indices].max()),
                         "difficulty_pool_max": float(difficulty.max())}
