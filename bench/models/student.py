"""The retrieval student: a trainable image encoder and a trainable head over frozen text vectors.

The same module serves ordinary training (``forward``) and differentiating through training
steps (``functional_embed`` with an explicit parameter dict), so there is exactly one
definition of what the student computes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from bench.data.pairs import PairSet, normalize_images
from bench.models.feature_memo import kept_features
from bench.models.heads import build_head
from bench.models.image_encoders import ImageEncoderConfig, build_image_encoder

IMAGE_PREFIXES = ("image_encoder.", "image_projection.")
TEXT_PREFIXES = ("text_head.",)

#: Maps a batch's (image tower features, text vectors) to the inputs of the two heads, e.g. a
#: mixup of the batch (RepBlend). It must be differentiable in both.
BeforeHeads = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


FROZEN_NEEDS_PROJECTION = ("a frozen image tower (image_encoder.freeze) needs a trainable image projection: "
                           "set embed_dim")


@dataclass(frozen=True)
class ModelConfig:
    """embed_dim None: the text head projects straight into the image feature space (as in the
    paper, where the image side has no head); an integer adds an image projection, a Linear
    layer or (``image_head: residual``) the same residual MLP as the text head (no dropout)."""

    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_head: Literal["residual", "linear"] = "residual"
    text_dropout: float = 0.1
    embed_dim: int | None = None
    image_head: Literal["linear", "residual"] = field(default="linear", metadata={"omit_if_default": True})

    def __post_init__(self) -> None:
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError("text_dropout must be in [0, 1)")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError("embed_dim must be positive")
        if self.image_encoder.freeze and self.embed_dim is None:
            raise ValueError(FROZEN_NEEDS_PROJECTION)


class Student(nn.Module):
    """Image encoder (+ optional image projection) and text head into one embedding space.

    With a frozen image tower (``image_encoder.freeze``) the tower is a fixed feature
    extractor: it stays in eval mode whatever mode the student is in, so its features of an
    image never change, and trainers may compute them once (:meth:`forward` with
    ``from_features=True`` then takes those features instead of images)."""

    def __init__(self, cfg: ModelConfig, resolution: int, text_dim: int) -> None:
        super().__init__()
        self.image_encoder = build_image_encoder(cfg.image_encoder, resolution)
        self.frozen_tower = cfg.image_encoder.freeze
        feature_dim = self.image_encoder.out_dim
        if self.frozen_tower and cfg.embed_dim is None:
            raise ValueError(FROZEN_NEEDS_PROJECTION)
        if cfg.embed_dim is None:
            self.image_projection: nn.Module = nn.Identity()
            embed_dim = feature_dim
        else:
            self.image_projection = build_head(cfg.image_head, feature_dim, cfg.embed_dim, 0.0)
            embed_dim = cfg.embed_dim
        self.text_head = build_head(cfg.text_head, text_dim, embed_dim, cfg.text_dropout)
        self.embed_dim = embed_dim

    def train(self, mode: bool = True) -> Student:
        super().train(mode)
        if self.frozen_tower:
            self.image_encoder.eval()
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower's output (before the projection)."""
        return self.image_encoder(images)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(features), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.image_features(images))

    def encode_texts(self, text_emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(text_emb), dim=-1)

    def forward(self, images: torch.Tensor, text_emb: torch.Tensor, from_features: bool = False,
                before_heads: BeforeHeads | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised embeddings of a batch. ``before_heads`` sees the tower's features (the
        ``images`` themselves with ``from_features``) and the text vectors, and returns what
        the image projection and the text head get instead: the one place between the towers
        and the heads, so that a method can act there whether or not the tower is frozen."""
        features = images if from_features else self.image_features(images)
        if before_heads is not None:
            features, text_emb = before_heads(features, text_emb)
        return self.embed_features(features), self.encode_texts(text_emb)

    def trainable_parameters(self) -> dict[str, torch.Tensor]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def modality_of(self, name: str) -> Literal["image", "text"]:
        if name.startswith(IMAGE_PREFIXES):
            return "image"
        if name.startswith(TEXT_PREFIXES):
            return "text"
        raise KeyError(f"parameter {name!r} belongs to neither the image nor the text side")


def build_student(cfg: ModelConfig, resolution: int, text_dim: int, seed: int) -> Student:
    """A freshly initialised student; the initialisation depends only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Student(cfg, resolution, text_dim)


@torch.no_grad()
def tower_features(student: Student, images: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """The image tower's features of ``images`` (model input, or uint8 pixels), in chunks, on
    ``device``: what a trainer computes once for a frozen tower instead of at every step. A
    large image set's features are kept by the process (:mod:`bench.models.feature_memo`):
    shared between callers, read-only."""

    def compute() -> torch.Tensor:
        return torch.cat([student.image_features(normalize_images(images[i:i + batch_size].to(device)))
                          for i in range(0, images.shape[0], batch_size)])

    if not student.frozen_tower:
        return compute()
    return kept_features(student.image_encoder, images, device, batch_size, compute)


def functional_embed(
    student: Student, params: Mapping[str, torch.Tensor], images: torch.Tensor, text_emb: torch.Tensor,
    from_features: bool = False, before_heads: BeforeHeads | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's forward with ``params`` in place of its own (buffers stay the module's)."""
    return torch.func.functional_call(student, dict(params), (images, text_emb),
                                      {"from_features": from_features, "before_heads": before_heads})


@torch.no_grad()
def embed_real_batch(student: Student, params: Mapping[str, torch.Tensor], real: PairSet, indices: torch.Tensor,
                     features: torch.Tensor | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`functional_embed` of the real pairs ``indices``, without gradients: from the
    frozen tower's precomputed ``features`` (:func:`tower_features` of ``real.images``) when
    given, else from the pixels. What distribution-matching methods compare their set with."""
    if features is None:
        return functional_embed(student, params, *real.batch(indices, device))
    return functional_embed(student, params, features[real.image_index[indices].to(device)],
                            real.text_emb[indices].to(device), from_features=True)
