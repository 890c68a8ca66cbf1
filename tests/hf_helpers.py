"""Tiny random-weight transformers image towers, saved to a directory and loaded offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_models() -> dict[str, tuple[Callable[[], nn.Module], int]]:
    """kind -> (make the model, the width of its pooled feature)."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        ConvNextConfig,
        ConvNextModel,
        ResNetConfig,
        ResNetModel,
        ViTConfig,
        ViTModel,
    )

    return {
        "vit": (lambda: ViTModel(ViTConfig(image_size=32, patch_size=8, **SMALL)), 32),
        "clip": (lambda: CLIPModel(CLIPConfig(
            vision_config={"image_size": 32, "patch_size": 8, **SMALL},
            text_config={"vocab_size": 100, **SMALL}, projection_dim=16)), 32),
        "convnext": (lambda: ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)), 16),
        "resnet": (lambda: ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])), 16),
    }


def save_tiny(kind: str, directory: Path, seed: int = 0, mean: float = 0.5, std: float = 0.5) -> Path:
    """Save a tiny ``kind`` model (weights from ``seed``) with a preprocessor config; returns the directory."""
    make, _ = tiny_models()[kind]
    torch.manual_seed(seed)
    make().save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({"image_mean": [mean] * 3, "image_std": [std] * 3}))
    return directory
