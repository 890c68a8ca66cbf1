"""PairSet: what a student trains on, whether real pairs or a synthetic (distilled) set.

Real pairs keep uint8 images shared between a picture's captions (a train image has ~5
captions, so pairs index into the images); they are normalised per batch, which keeps a
224 px Flickr30K train split at 4 GB instead of 17 GB of float. Synthetic images are already
float tensors in the normalised input space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bench.data.types import IMAGE_MEAN, IMAGE_STD, Split


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> model input; float tensors are assumed to be model input already."""
    if images.dtype != torch.uint8:
        return images
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def denormalize_images(images: torch.Tensor) -> torch.Tensor:
    """Model input -> [0, 1] floats for display (clipped)."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)


#: Half a grey level (in [0, 1] units): how far outside [0, 1] an undone pixel value may lie
#: and still round to a value an 8-bit image holds.
SATURATION_MARGIN = 0.5 / 255


def saturation(images: torch.Tensor) -> tuple[float, float, float]:
    """How far model-input images have left the range of real images: the fraction of their
    pixel values (every image, channel and position) that lie outside [0, 1] by more than
    :data:`SATURATION_MARGIN` once the normalisation is undone (``x * std + mean``), and the
    smallest and largest undone value. Such values are clipped when the set is drawn, and no
    real image gives a student such an input. uint8 images (real pixels) give (0, 0, 1)."""
    if images.dtype == torch.uint8 or not images.numel():
        return 0.0, 0.0, 1.0
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=images.device).view(1, 3, 1, 1)
    undone = images.detach().float() * std + mean
    outside = (undone < -SATURATION_MARGIN) | (undone > 1 + SATURATION_MARGIN)
    return float(outside.float().mean()), float(undone.min()), float(undone.max())


@dataclass(frozen=True)
class SoftTargets:
    """Learned similarity targets of a set: ``matrix[i, j]`` is how similar pair i's image
    should be to pair j's text (the identity = the usual hard targets), and the loss that
    trains against them (``bench.models.losses``: 'infonce' or 'wbce'). ``clip``: the loss
    clips the targets to their bounded range (the suite's rule, always so for a method's set;
    set files do not store it); False uses them unclipped, as LoRS's code does, for the
    ablation in ``benchmarks/ablate_soft_targets.py --unclipped``."""

    matrix: torch.Tensor
    loss: Literal["infonce", "wbce"]
    clip: bool = True

    def block(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The targets among the pairs of ``batch`` (rows: images, columns: texts)."""
        return self.matrix[batch][:, batch].to(device, non_blocking=True)


@dataclass(frozen=True)
class PairSet:
    """images (m, 3, H, W) uint8 or float; image_index (n,) into images; text_emb (n, d).
    source_indices: the train pair indices when the pairs are real (None when synthetic).
    soft_targets: learned (n, n) similarity targets to train with (None: hard targets)."""

    images: torch.Tensor
    image_index: torch.Tensor
    text_emb: torch.Tensor
    source_indices: torch.Tensor | None = None
    soft_targets: SoftTargets | None = None

    def __post_init__(self) -> None:
        n = self.image_index.shape[0]
        if self.text_emb.ndim != 2 or self.text_emb.shape[0] != n:
            raise ValueError(f"text_emb must be (n_pairs={n}, d), got {tuple(self.text_emb.shape)}")
        if n and (int(self.image_index.min()) < 0 or int(self.image_index.max()) >= self.images.shape[0]):
            raise ValueError("image_index points outside images")
        if self.soft_targets is not None and tuple(self.soft_targets.matrix.shape) != (n, n):
            raise ValueError(f"soft targets must be (n_pairs, n_pairs) = ({n}, {n}), "
                             f"got {tuple(self.soft_targets.matrix.shape)}")

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def batch(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images[self.image_index[indices]].to(device, non_blocking=True)
        return normalize_images(images), self.text_emb[indices].to(device, non_blocking=True)

    @staticmethod
    def synthetic(images: torch.Tensor, text_emb: torch.Tensor, soft_targets: SoftTargets | None = None) -> PairSet:
        return PairSet(images, torch.arange(images.shape[0]), text_emb, soft_targets=soft_targets)


def real_pairs(split: Split, text_emb: torch.Tensor, indices: torch.Tensor | None = None) -> PairSet:
    """Pairs of a train split (all, or the pair indices given), sharing the split's images."""
    if text_emb.shape[0] != split.n_captions:
        raise ValueError(f"{split.n_captions} captions but {text_emb.shape[0]} text embeddings")
    if indices is None:
        return PairSet(split.images, split.caption_image, text_emb, None)
    indices = torch.as_tensor(indices, dtype=torch.int64)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= split.n_captions):
        raise ValueError(f"pair indices must lie in [0, {split.n_captions})")
    # Keep only the images the subset uses, so a saved subset is small.
    used, image_index = torch.unique(split.caption_image[indices], return_inverse=True)
    return PairSet(split.images[used], image_index, text_emb[indices], indices)
