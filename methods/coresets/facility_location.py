"""facility-location: the pairs that best cover the pool, by lazy greedy (CRAIG's objective).

CRAIG (Mirzasoleiman et al., ICML 2020) picks the subset S maximising the facility-location
function F(S) = sum over the pool of the similarity of each pair to its most similar member
of S: every pair should have a close representative. F is monotone submodular, so greedy
selection is within 1 - 1/e of the optimum, and lazy greedy (Minoux 1978) gives the same
picks with far fewer gain evaluations. A dense n x n similarity is out of reach at Flickr
scale (145,000^2), so the similarity is sparse: s_ij = max(0, cos(x_i, x_j)) for j among the
``neighbours`` nearest rows of i (i itself included, s_ii = 1), 0 otherwise, from a FAISS
k-nearest-neighbour search.
"""

from __future__ import annotations

import heapq
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bench.methods_api import MethodContext
from bench.registry import register
from methods.coresets._common import (
    CoresetMethod,
    as_features,
    check_select_budget,
    proxy_rows,
)

#: ``search: auto`` searches exactly while n^2 * d stays below this (about 10 s on 2 cores);
#: beyond it, approximately (embedded: 5,000^2 x 512 = 1.3e10; Flickr30K: 145,000^2 x 4,608 = 9.7e13).
EXACT_MAX_WORK = 2.0e11
#: The approximate search: a PCA of this many dimensions (fitted on a sample of rows), then an
#: inverted-file index of ceil(sqrt(n)) lists trained on at most 40 rows per list, of which
#: NPROBE are scanned per query; similarities are cosines of the projected rows. (Twice the
#: lists halve the search at Flickr scale, 54 -> 25 s on 2 busy cores, but cut the neighbour
#: recall of the clustered test pool from 0.81 to 0.74.)
PCA_DIM = 128
PCA_SAMPLE = 10_000
NPROBE = 8


@dataclass(frozen=True)
class FacilityLocationParams:
    """neighbours: k of the sparse similarity (each pair is similar to its k nearest, itself
    included; at least 1). search: ``exact`` (flat inner-product index on the features),
    ``approximate`` (PCA + inverted file, for large pools), ``auto`` (exact while n^2 * d <=
    EXACT_MAX_WORK)."""

    neighbours: int = 10
    search: Literal["auto", "exact", "approximate"] = "auto"

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {self.neighbours}")
        if self.search not in ("auto", "exact", "approximate"):
            raise ValueError(f"search must be 'auto', 'exact' or 'approximate', got {self.search!r}")


@dataclass(frozen=True)
class KnnGraph:
    """Row i's neighbours ``ids[i]`` (k of them, i among them) with similarities ``sims[i]``
    (cosines clipped at 0). ``exact``: whether the search was exact."""

    ids: np.ndarray  # (n, k) int64
    sims: np.ndarray  # (n, k) float64
    exact: bool


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit norm (a copy; zero rows stay zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return (x / np.maximum(norms, np.finfo(np.float32).tiny)[:, None]).astype(np.float32)


def _pca(x: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(dim, d) the leading right singular vectors of a sample of rows, by a randomized SVD
    (Halko, Martinsson and Tropp 2011: a Gaussian range finder, two power iterations).
    Uncentred, so that what the projection keeps best is the rows' inner products."""
    sample = x[np.sort(rng.choice(x.shape[0], size=min(PCA_SAMPLE, x.shape[0]), replace=False))].astype(np.float32)
    width = min(dim + 10, *sample.shape)
    q = np.linalg.qr(sample @ rng.standard_normal((x.shape[1], width), dtype=np.float32))[0]
    for _ in range(2):
        q = np.linalg.qr(sample @ (sample.T @ q))[0]
    return np.linalg.svd(q.T @ sample, full_matrices=False)[2][:dim]


def _search(rows: np.ndarray, k: int, exact: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """FAISS inner-product top-k of every unit row among all rows (flat, or inverted file)."""
    import faiss

    d = rows.shape[1]
    if exact:
        index = faiss.IndexFlatIP(d)
    else:
        lists = int(np.ceil(np.sqrt(rows.shape[0])))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(rng.integers(2**31))
        index.cp.min_points_per_centroid = 1  # a sample of 40 per list is ours to choose: no warning
        train = rows[np.sort(rng.choice(rows.shape[0], size=min(rows.shape[0], 40 * lists), replace=False))]
        index.train(train)
        index.nprobe = min(NPROBE, lists)
    index.add(rows)
    sims, ids = index.search(rows, k)
    return sims.astype(np.float64), ids.astype(np.int64)


def knn_graph(features: np.ndarray, neighbours: int, rng: np.random.Generator,
              search: Literal["auto", "exact", "approximate"] = "auto") -> KnnGraph:
    """The sparse similarity of the module docstring. Exact: cosines of the features. Approximate:
    cosines of their PCA projection (PCA_DIM) found through an inverted file; the sample, the
    random range and the k-means seed come from ``rng``. A row that its search did not return
    among its own neighbours (duplicates, approximation) gets itself in place of the last."""
    x = as_features(features)
    n, d = x.shape
    k = min(neighbours, n)
    if neighbours > n:  # clamped, not refused: every pair is then a neighbour of every other
        warnings.warn(f"facility-location: neighbours {neighbours} is more than the {n} pairs; using {n}",
                      stacklevel=2)
    exact = search == "exact" or (search == "auto" and float(n) * n * d <= EXACT_MAX_WORK)
    if exact or d <= PCA_DIM:
        rows = _unit_rows(x)
    else:
        components = _pca(x, PCA_DIM, rng)
        rows = np.concatenate([_unit_rows(x[s:s + 8192] @ components.T.astype(x.dtype))
                               for s in range(0, n, 8192)])
    sims, ids = _search(rows, k, exact, rng)
    own = np.arange(n)
    missing = ~(ids == own[:, None]).any(axis=1)
    ids[missing, -1], sims[missing, -1] = own[missing], 1.0
    valid = ids >= 0  # an inverted file may return fewer than k: -1 ids, similarity 0
    ids, sims = np.where(valid, ids, own[:, None]), np.where(valid, np.maximum(sims, 0.0), 0.0)
    return KnnGraph(ids, sims, exact)


def objective(graph: KnnGraph, selected: np.ndarray) -> float:
    """F(S) = sum_i max_{j in S} s_ij on the sparse similarity (0 for a row with no member of S
    among its neighbours)."""
    member = np.zeros(graph.ids.shape[0], dtype=bool)
    member[np.asarray(selected, dtype=np.int64)] = True
    return float(np.where(member[graph.ids], graph.sims, 0.0).max(axis=1).sum())


def greedy(graph: KnnGraph, budget: int) -> np.ndarray:
    """Lazy greedy maximisation of :func:`objective`: indices in selection order.

    Each step adds the pair of largest marginal gain sum_i max(0, s_ij - cover_i) over the rows
    i having j among their neighbours (a transposed adjacency), lowest index on ties. Gains
    only shrink as S grows (submodularity), so a heap of stale gains is an upper bound: pop
    the top, recompute its gain, and take it if it is still on top (gain, then index),
    otherwise push it back. This makes exactly the picks of plain greedy."""
    n = graph.ids.shape[0]
    check_select_budget(budget, n)
    order = np.argsort(graph.ids, axis=None, kind="stable")
    rows = order // graph.ids.shape[1]
    values = graph.sims.ravel()[order]
    start = np.searchsorted(graph.ids.ravel()[order], np.arange(n + 1))
    cover = np.zeros(n)
    heap = [(-g, j) for j, g in enumerate(np.bincount(graph.ids.ravel(), graph.sims.ravel(), minlength=n))]
    heapq.heapify(heap)
    chosen: list[int] = []
    while len(chosen) < budget:
        _, j = heapq.heappop(heap)
        who, sim = rows[start[j]:start[j + 1]], values[start[j]:start[j + 1]]
        entry = (-float(np.maximum(sim - cover[who], 0.0).sum()), j)
        if heap and entry > heap[0]:
            heapq.heappush(heap, entry)
            continue
        np.maximum.at(cover, who, sim)
        chosen.append(j)
    return np.asarray(chosen, dtype=np.int64)


def select(features: np.ndarray, budget: int, rng: np.random.Generator, neighbours: int = 10,
           search: Literal["auto", "exact", "approximate"] = "auto") -> np.ndarray:
    """Indices of ``budget`` pairs in selection order: :func:`greedy` on :func:`knn_graph`.
    Deterministic per ``rng`` (the exact search does not use it)."""
    check_select_budget(budget, np.shape(features)[0])
    return greedy(knn_graph(features, neighbours, rng, search), budget)


@register("facility-location", "coreset", "CRAIG facility location: lazy greedy coverage of a FAISS kNN similarity")
class FacilityLocationCoreset(CoresetMethod):
    Params = FacilityLocationParams
    uses_proxy = True
    # The similarity graph's degree: how local "represented" is (50 on the embedded set).
    default_search = {"neighbours": [5, 10, 20, 50]}

    def choose(self, ctx: MethodContext, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        graph = knn_graph(proxy_rows(ctx, ctx.proxy_features(), "features"), self.params.neighbours, rng,
                          self.params.search)
        indices = greedy(graph, budget)
        return indices, {"exact_search": graph.exact, "coverage": objective(graph, indices) / ctx.n_pairs}
