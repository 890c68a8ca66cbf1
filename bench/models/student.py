"""The retrieval student: a trainable image encoder and a trainable head over frozen text vectors.

The same module serves ordinary training (``forward``) and differentiating through training
steps (``functional_embed`` with an explicit parameter dict), so there is exactly one
definition of what the student computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from bench.models.image_encoders import ImageEncoderConfig, build_image_encoder
from bench.models.text_head import build_text_head

IMAGE_PREFIXES = ("image_encoder.", "image_projection.")
TEXT_PREFIXES = ("text_head.",)


@dataclass(frozen=True)
class ModelConfig:
    """embed_dim None: the text head projects straight into the image feature space (as in the
    paper, where the image side has no head); an integer adds a linear image projection."""

    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_head: Literal["residual", "linear"] = "residual"
    text_dropout: float = 0.1
    embed_dim: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError("text_dropout must be in [0, 1)")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError("embed_dim must be positive")


class Student(nn.Module):
    def __init__(self, cfg: ModelConfig, resolution: int, text_dim: int) -> None:
        super().__init__()
        self.image_encoder = build_image_encoder(cfg.image_encoder, resolution)
        feature_dim = self.image_encoder.out_dim
        if cfg.embed_dim is None:
            self.image_projection: nn.Module = nn.Identity()
            embed_dim = feature_dim
        else:
            self.image_projection = nn.Linear(feature_dim, cfg.embed_dim)
            embed_dim = cfg.embed_dim
        self.text_head = build_text_head(cfg.text_head, text_dim, embed_dim, cfg.text_dropout)
        self.embed_dim = embed_dim

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.image_encoder(images)), dim=-1)

    def encode_texts(self, text_emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(text_emb), dim=-1)

    def forward(self, images: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_images(images), self.encode_texts(text_emb)

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


def functional_embed(
    student: Student, params: Mapping[str, torch.Tensor], images: torch.Tensor, text_emb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's forward with ``params`` in place of its own (buffers stay the module's)."""
    return torch.func.functional_call(student, dict(params), (images, text_emb))


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of aligned (image i, text i) pairs."""
    logits = logit_scale * image_emb @ text_emb.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
