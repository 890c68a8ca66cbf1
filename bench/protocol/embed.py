"""Embeddings of a trained student: every image and caption of a split, or every pair of a set.

Shared by the evaluation (recall on a val/test split) and the proxy model (coreset features);
it sits below both so neither has to import the other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.data.pairs import PairSet, normalize_images
from bench.data.types import Split
from bench.models.student import Student


def _batched(encode: Callable[[slice], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """``encode`` applied to consecutive slices of ``range(n)``, concatenated on the CPU."""
    return torch.cat([encode(slice(i, i + batch_size)).cpu() for i in range(0, n, batch_size)])


@torch.no_grad()
def embed_split(
    student: Student, split: Split, text_emb: torch.Tensor, device: torch.device, batch_size: int = 512,
    image_features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and caption embeddings of a val/test split. ``image_features``: the
    tower's features of the split's images (:func:`split_features`, for a frozen tower),
    used instead of running the tower; the same batches, so the same numbers bit for bit."""
    student.eval().to(device)
    if image_features is None:
        images = _batched(lambda s: student.encode_images(normalize_images(split.images[s].to(device))),
                          split.n_images, batch_size)
    else:
        images = _batched(lambda s: student.embed_features(image_features[s].to(device)), split.n_images, batch_size)
    texts = _batched(lambda s: student.encode_texts(text_emb[s].to(device)), split.n_captions, batch_size)
    return images, texts


@torch.no_grad()
def split_features(student: Student, split: Split, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """The image tower's features of every image of a split, in :func:`embed_split`'s batches."""
    student.eval().to(device)
    return _batched(lambda s: student.image_features(normalize_images(split.images[s].to(device))),
                    split.n_images, batch_size)


@torch.no_grad()
def embed_pairs(
    student: Student, pairs: PairSet, device: torch.device, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (image, caption) embeddings of every pair of a pair set. Each distinct image
    goes through the tower once (a real image has ~5 captions, so ~5 pairs)."""
    student.eval().to(device)
    unique, inverse = torch.unique(pairs.image_index, return_inverse=True)
    images = _batched(lambda s: student.encode_images(normalize_images(pairs.images[unique[s]].to(device))),
                      len(unique), batch_size)[inverse]
    texts = _batched(lambda s: student.encode_texts(pairs.text_emb[s].to(device)), len(pairs), batch_size)
    return images, texts
