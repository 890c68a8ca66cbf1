"""Image-text retrieval recall@K (docs/protocol.md, "Metrics").

TR@K (image -> text): an image is a hit when ANY of its captions ranks in the top K.
IR@K (text -> image): a caption is a hit when its one image ranks in the top K.
Similarity is cosine: both sides are L2-normalised in float32 and compared by inner product.

Ties are broken PESSIMISTICALLY, by a rule that does not depend on the search library's
arbitrary ordering of equal scores: the rank of a query's best correct candidate is the number
of INCORRECT candidates whose score is >= the best correct score, and the query is a hit at K
iff that rank < K. Why: a collapsed student that maps every input to one vector gives every
pair the same score; with optimistic (or arbitrary) tie breaking it could score up to 100%,
with the pessimistic rule it scores 0 (for every K smaller than the number of candidates).

Two backends compute the same numbers: ``faiss`` (the protocol's choice: exact inner-product
index, GPU index when a GPU build of faiss and a GPU are present) and ``torch`` (chunked matmul
+ topk on the tensors' device; an independent cross-check and a fallback).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
import torch

__all__ = ["retrieval_metrics"]

#: Upper bound on the number of float32 scores the torch backend holds at once (256 MiB).
_TORCH_CHUNK_SCORES = 1 << 26


def retrieval_metrics(
    image_emb: Any,
    text_emb: Any,
    text_to_image: Any,
    ks: Sequence[int] = (1, 5, 10),
    backend: str = "faiss",
    use_gpu: bool | None = None,
) -> dict[str, float]:
    """Recall@K in both directions, in percent, with pessimistic tie breaking.

    Args:
        image_emb: (n_images, d) torch tensor (any device / float dtype) or numpy array.
        text_emb: (n_texts, d), same kinds as ``image_emb``.
        text_to_image: (n_texts,) integers, ``text_to_image[j]`` = image index of caption j.
            Images may have different numbers of captions. An image with NO caption is left
            out of TR (it has nothing to retrieve, so it can be neither hit nor miss) but stays
            in the image database for IR, where it is a distractor like any other image.
        ks: the cut-offs K (positive integers; duplicates are ignored).
        backend: ``"faiss"`` or ``"torch"``; both give identical numbers.
        use_gpu: faiss: None = GPU index iff faiss has GPU support and sees a GPU, True = GPU
            (RuntimeError if unavailable), False = CPU. torch: None = the embeddings' device,
            True = CUDA (RuntimeError if unavailable), False = CPU.

    Returns:
        ``{"tr@K": ..., "ir@K": ..., "mean": ...}`` as Python floats in [0, 100]; ``mean`` is
        the mean of all the tr@K and ir@K values.

    Rank rule: rank of a query = number of incorrect candidates scoring >= its best correct
    candidate; hit at K iff rank < K. A collapsed embedding (all vectors equal) scores 0, not
    100, which is the point: ties must never reward a degenerate student.
    """
    images, texts, t2i, ks_list = _validate(image_emb, text_emb, text_to_image, ks, backend)
    device = _torch_device(images, use_gpu) if backend == "torch" else None
    images = _normalise(images if device is None else images.to(device))
    texts = _normalise(texts if device is None else texts.to(device))
    cap = max(ks_list)
    n_images = images.shape[0]

    # TR: each image's correct candidates are its captions, padded with -1 to the largest count.
    counts = np.bincount(t2i, minlength=n_images)
    order = np.argsort(t2i, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    slot = np.arange(t2i.size) - starts[t2i[order]]
    captions_of = np.full((n_images, int(counts.max())), -1, dtype=np.int64)
    captions_of[t2i[order], slot] = order
    has_caption = counts > 0
    query_rows = torch.from_numpy(np.flatnonzero(has_caption)).to(images.device)
    tr_rank = _capped_ranks(
        images[query_rows], texts, captions_of[has_caption], cap, backend, use_gpu
    )
    # IR: each caption's one correct candidate is its image.
    ir_rank = _capped_ranks(texts, images, t2i[:, None], cap, backend, use_gpu)

    out: dict[str, float] = {}
    for k in ks_list:
        out[f"tr@{k}"] = 100.0 * int(np.count_nonzero(tr_rank < k)) / tr_rank.size
    for k in ks_list:
        out[f"ir@{k}"] = 100.0 * int(np.count_nonzero(ir_rank < k)) / ir_rank.size
    out["mean"] = float(np.mean(list(out.values())))
    return out


def _capped_ranks(
    queries: torch.Tensor,
    database: torch.Tensor,
    correct: np.ndarray,
    cap: int,
    backend: str,
    use_gpu: bool | None,
) -> np.ndarray:
    """min(pessimistic rank, cap) for each query; ``correct[i]`` = query i's correct ids, -1 padded.

    One search at k = cap + m (m = most correct candidates of any query), clipped to the
    database size. Counting, inside the returned list, the incorrect entries scoring >= the
    best correct score in the list and capping at ``cap`` gives exactly min(true rank, cap):
    Let s* = true best correct score, r = true number of incorrect scores >= s*, and c <= m the
    correct ones scoring s*. (1) r < cap: r + c < cap + m = k items score >= s*, so the top-k
    list holds all of them (and others below s*): in-list best correct = s*, in-list count = r.
    (2) r >= cap: either the list holds all items >= s* (count = r >= cap), or all k items in
    it score >= s*, so any correct one in it scores s* and the >= k - m = cap others are
    incorrect, count >= cap; with no correct one in it the query is a miss. Ties only change
    WHICH tied items are listed, never the count, so the search's tie order cannot matter.
    (When k is clipped to the database size the whole database is listed: trivially exact.)
    """
    k = min(cap + correct.shape[1], database.shape[0])
    if backend == "faiss":
        scores, ids = _search_faiss(queries, database, k, use_gpu)
    else:
        scores, ids = _search_torch(queries, database, k)
    is_correct = (ids[:, :, None] == correct[:, None, :]).any(axis=2) & (ids >= 0)
    found = is_correct.any(axis=1)
    # The search's own scores are used for both sides of the comparison (no recomputation with
    # another library, which could disagree by an ulp and break a tie the other way).
    best = np.where(is_correct, scores, -np.inf).max(axis=1)
    count = np.count_nonzero(~is_correct & (scores >= best[:, None]), axis=1)
    return np.where(found, np.minimum(count, cap), cap)


def faiss_has_gpu() -> bool:
    """True when the installed faiss is a GPU build and sees at least one GPU (faiss-cpu
    lacks ``StandardGpuResources``; a GPU build on a machine without GPUs reports 0)."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _search_faiss(
    queries: torch.Tensor, database: torch.Tensor, k: int, use_gpu: bool | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with an IndexFlatIP (on a GPU when asked / available)."""
    import faiss

    gpu_ok = faiss_has_gpu()
    if use_gpu and not gpu_ok:
        raise RuntimeError(
            "use_gpu=True but this faiss build has no GPU support or sees no GPU "
            "(install a faiss GPU build, or pass use_gpu=None/False)"
        )
    q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
    db = np.ascontiguousarray(database.detach().cpu().numpy(), dtype=np.float32)
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    if gpu_ok if use_gpu is None else use_gpu:
        resources = faiss.StandardGpuResources()  # must outlive the search below
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    scores, ids = index.search(q, k)
    return scores, ids.astype(np.int64, copy=False)


def _search_torch(
    queries: torch.Tensor, database: torch.Tensor, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by chunked matmul on the tensors' device; bounded memory per chunk."""
    chunk = max(1, _TORCH_CHUNK_SCORES // database.shape[0])
    all_scores, all_ids = [], []
    with torch.no_grad():
        for start in range(0, queries.shape[0], chunk):
            sims = queries[start : start + chunk] @ database.T
            scores, ids = torch.topk(sims, k, dim=1, largest=True, sorted=True)
            all_scores.append(scores.cpu())
            all_ids.append(ids.cpu())
    return torch.cat(all_scores).numpy(), torch.cat(all_ids).numpy().astype(np.int64, copy=False)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 normalisation in float32 (an all-zero row stays zero instead of NaN)."""
    x = x.to(torch.float32)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _torch_device(images: torch.Tensor, use_gpu: bool | None) -> torch.device:
    if use_gpu is None:
        return images.device
    if use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError("use_gpu=True with backend='torch' but CUDA is not available")
        return torch.device("cuda")
    return torch.device("cpu")


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _validate(
    image_emb: Any, text_emb: Any, text_to_image: Any, ks: Sequence[int], backend: str
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[int]]:
    """Check everything up front, so that a bad call fails loudly instead of scoring garbage."""
    if backend not in ("faiss", "torch"):
        raise ValueError(f"backend must be 'faiss' or 'torch', got {backend!r}")
    ks_list = list(dict.fromkeys(ks))  # keeps order, drops duplicates
    if not ks_list:
        raise ValueError("ks is empty: give at least one cut-off K")
    if any(isinstance(k, bool) or not isinstance(k, Integral) or k <= 0 for k in ks_list):
        raise ValueError(f"every K in ks must be a positive integer, got {ks!r}")
    ks_list = [int(k) for k in ks_list]

    images = _as_tensor(image_emb, "image_emb")
    texts = _as_tensor(text_emb, "text_emb")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"embedding dims differ: image_emb has d={images.shape[1]}, text_emb has d={texts.shape[1]}"
        )
    if isinstance(text_to_image, torch.Tensor):
        text_to_image = text_to_image.detach().cpu().numpy()
    t2i = np.asarray(text_to_image)
    if t2i.ndim != 1:
        raise ValueError(f"text_to_image must be 1-D, got shape {t2i.shape}")
    if t2i.size != texts.shape[0]:
        raise ValueError(
            f"text_to_image has length {t2i.size} but text_emb has {texts.shape[0]} rows (n_texts)"
        )
    if not np.issubdtype(t2i.dtype, np.integer):
        raise ValueError(f"text_to_image must hold integer image indices, got dtype {t2i.dtype}")
    t2i = t2i.astype(np.int64)
    if t2i.min() < 0 or t2i.max() >= images.shape[0]:
        raise ValueError(
            f"text_to_image indices out of range: values span [{t2i.min()}, {t2i.max()}] "
            f"but there are {images.shape[0]} images"
        )
    return images, texts, t2i, ks_list
