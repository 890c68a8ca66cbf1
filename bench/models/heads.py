"""Trainable projection heads: over the frozen caption embeddings, and over a frozen image tower's features."""

from __future__ import annotations

import torch
from torch import nn


class ResidualProjection(nn.Module):
    """The paper's projection head: Linear -> GELU -> Linear -> dropout, plus the first
    linear's output as a residual, then LayerNorm. (Same shape as the text projection used by
    the VL-distillation code's CLIP-style student.)"""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        x = self.dropout(self.fc(nn.functional.gelu(projected)))
        return self.norm(x + projected)


def build_head(kind: str, in_dim: int, out_dim: int, dropout: float) -> nn.Module:
    if kind == "residual":
        return ResidualProjection(in_dim, out_dim, dropout)
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    raise ValueError(f"unknown head {kind!r}; expected 'residual' or 'linear'")
