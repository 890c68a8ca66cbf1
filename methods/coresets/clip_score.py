"""clip-score: the pairs whose image and caption agree most under the proxy (DataComp's filter).

DataComp (Gadre et al., NeurIPS 2023 datasets track) filters a pool by CLIP score, the cosine
of a pair's image and text embeddings under a trained CLIP, keeping the best-agreeing pairs.
Here the CLIP is the proxy run: its towers and heads give every pair an image and a text
embedding (:meth:`bench.protocol.proxy.ProxyRun.embeddings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.data.datasets import PreparedDataset
from bench.methods_api import MethodContext
from bench.registry import register
from methods.coresets._common import (
    CoresetMethod,
    as_features,
    check_select_budget,
    proxy_rows,
    rank,
    squared_norms,
    top,
)


@dataclass(frozen=True)
class ClipScoreParams:
    """max_per_image: at most this many of one image's pairs (captions) in the set; None: no cap
    (a well-described image could otherwise fill the set with its five captions)."""

    max_per_image: int | None = None

    def __post_init__(self) -> None:
        if self.max_per_image is not None and self.max_per_image < 1:
            raise ValueError(f"max_per_image must be at least 1 (or null for no cap), got {self.max_per_image}")


def scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """(n,) float64 cosine of each pair's image and text embeddings (rows of one width)."""
    image, text = as_features(image_emb), as_features(text_emb)
    if image.shape != text.shape:
        raise ValueError(f"image and text embeddings must have one shape, got {image.shape} and {text.shape}")
    dots = np.einsum("ij,ij->i", image, text, dtype=np.float64)
    norms = np.sqrt(squared_norms(image) * squared_norms(text))
    return dots / np.maximum(norms, np.finfo(np.float64).tiny)


def select(clip_scores: np.ndarray, budget: int, rng: np.random.Generator,
           image_ids: np.ndarray | None = None, max_per_image: int | None = None) -> np.ndarray:
    """Indices of the ``budget`` highest-scoring pairs, best first; ties in a random order from
    ``rng``. With ``max_per_image`` a pair is skipped (in score order) once its image
    (``image_ids``, one per pair) already has that many pairs in the set."""
    if max_per_image is None:
        return top(clip_scores, budget, rng)
    order = rank(clip_scores, rng)
    check_select_budget(budget, order.shape[0])
    if image_ids is None or np.asarray(image_ids).shape != order.shape:
        raise ValueError("max_per_image needs image_ids, one image index per pair")
    ids = np.asarray(image_ids)[order]
    # The position of each pair among its image's pairs, in score order (a vectorised cumcount).
    by_image = np.argsort(ids, kind="stable")
    grouped = ids[by_image]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    position = np.empty(len(ids), dtype=np.int64)
    position[by_image] = np.arange(len(ids)) - first_of_group
    allowed = order[position < max_per_image]
    if len(allowed) < budget:
        raise ValueError(f"budget {budget} is more than {len(starts)} images x max_per_image {max_per_image} "
                         f"allow ({len(allowed)} pairs)")
    return allowed[:budget]


@register("clip-score", "coreset", "DataComp CLIP-score filter: the pairs whose proxy image and text embeddings agree most")
class ClipScoreCoreset(CoresetMethod):
    Params = ClipScoreParams
    uses_proxy = True
    # How many captions of one image may enter (2 on the embedded set; no cap is the plain rule).
    default_search = {"max_per_image": [1, 2, 3, None]}

    @classmethod
    def budget_problem(cls, params: ClipScoreParams, budget: int, data: PreparedDataset) -> str | None:
        if params.max_per_image is None:
            return None
        per_image = np.bincount(data.train.caption_image.numpy())
        allowed = int(np.minimum(per_image, params.max_per_image).sum())
        if budget > allowed:
            return (f"budget {budget} is more than {int((per_image > 0).sum())} images x max_per_image "
                    f"{params.max_per_image} allow ({allowed} pairs); raise max_per_image or lower the budget")
        return None

    def choose(self, ctx: MethodContext, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        image, text = ctx.proxy().embeddings()
        pair_scores = proxy_rows(ctx, scores(image, text), "embeddings")
        image_ids = ctx.data.train.caption_image.numpy()
        indices = select(pair_scores, budget, rng, image_ids, self.params.max_per_image)
        return indices, {"score_selected_min": float(pair_scores[indices].min()),
                         "score_pool_mean": float(pair_scores.mean()),
                         "images_selected": int(len(np.unique(image_ids[indices])))}
