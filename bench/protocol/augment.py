"""Differentiable augmentation (DSA-style) of a batch of model-input images.

Trajectory matching from scratch is known to profit from augmenting the images the same way
in expert training, in the unrolled inner loop and in evaluation (DSA, Zhao & Bilen 2021; MTT,
Cazenavette et al. 2022): the synthetic images then have to work under the transformations
the experts saw. Every operation here is differentiable in the pixels (the meta-gradient goes
through it), one random draw covers the whole batch (the batch is transformed the same way),
and every draw comes from the generator passed in, so a step can be replayed exactly.

Off by default. Mind what a transformation does to a caption: a horizontal flip swaps "left"
and "right", a shift can move an object into another third of the image, a hue change renames
colours; the embedded dataset's captions state all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """flip: probability of a horizontal flip. shift: largest translation, as a fraction of the
    side (zero padding). brightness: largest additive change, contrast and saturation: largest
    relative change (all in the normalised input space, applied in this order)."""

    flip: float = 0.0
    shift: float = 0.125
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"augment.flip is a probability, got {self.flip}")
        if not 0.0 <= self.shift < 0.5:
            raise ValueError(f"augment.shift must be in [0, 0.5), got {self.shift}")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            raise ValueError("augment.brightness, contrast and saturation must be >= 0")


def _uniform(gen: torch.Generator, scale: float) -> float:
    return float((torch.rand((), generator=gen) * 2 - 1) * scale)


def _shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate by (dy, dx) pixels, filling with zeros (the mean colour in input space)."""
    if dy == 0 and dx == 0:
        return images
    h, w = images.shape[-2:]
    out = torch.zeros_like(images)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = images[..., ys, xs]
    return out


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One random transformation of ``cfg``, drawn from ``gen``, applied to the whole batch.
    The draws happen whether or not an operation is enabled, so enabling one does not change
    the draws of the others."""
    flip = float(torch.rand((), generator=gen)) < cfg.flip
    max_shift = int(round(cfg.shift * images.shape[-1]))
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    brightness, contrast, saturation = (_uniform(gen, s) for s in (cfg.brightness, cfg.contrast, cfg.saturation))
    out = images.flip(-1) if flip else images
    out = _shift(out, dy, dx)
    if brightness:
        out = out + brightness
    if contrast:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * (1 + contrast) + mean
    if saturation:
        grey = out.mean(dim=1, keepdim=True)
        out = (out - grey) * (1 + saturation) + grey
    return out


class Augmentation:
    """``augment_batch`` bound to a config: the callable the matcher and the trainer take."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return augment_batch(images, self.cfg, gen)
