"""The in-memory data model shared by loaders, trainers, methods and evaluation.

One structure, :class:`Split`, serves both annotation shapes of the Karpathy format: the
train file (one entry per caption) and the val/test files (one entry per image with a list of
captions). In both cases we keep each distinct image once and map every caption to its image,
so a train *pair* is simply a caption index, and ``caption_image`` is exactly the
``text_to_image`` array the retrieval metric needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Per-channel statistics used to turn uint8 pixels into model inputs. Fixed (not estimated
#: per dataset) so that synthetic images from one run stay comparable with another run.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Split:
    """Decoded images and their captions.

    images:         uint8 tensor (n_images, 3, H, W), already at the configured resolution.
    captions:       one string per caption (= per pair in a train split).
    caption_image:  int64 tensor (n_captions,), the image index of each caption.
    image_names:    the relative path (or synthetic id) of each image, for messages and display.
    """

    images: torch.Tensor
    captions: tuple[str, ...]
    caption_image: torch.Tensor
    image_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (n, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.caption_image.dtype != torch.int64 or self.caption_image.shape != (len(self.captions),):
            raise ValueError("caption_image must be int64 with one entry per caption")
        if len(self.image_names) != self.images.shape[0]:
            raise ValueError("image_names must have one entry per image")
        if len(self.captions) and (self.caption_image.min() < 0 or self.caption_image.max() >= self.images.shape[0]):
            raise ValueError("caption_image holds an index outside the images")

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])


@dataclass(frozen=True)
class Dataset:
    """A named dataset: three splits plus a content key used to name cache entries."""

    name: str
    train: Split
    val: Split
    test: Split
    content_key: str

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise KeyError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self, name)
