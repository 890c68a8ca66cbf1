"""Image encoders by name: 'convnet' (from scratch), 'hf' (local transformers), 'timm' (optional).

Every encoder takes images normalised with ``bench.data.types.IMAGE_MEAN/IMAGE_STD`` and
returns a flat feature vector; ``out_dim`` tells the student how wide it is. timm is imported
only when a config asks for it (it needs torchvision, which has no CPU build here).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from bench.data.types import IMAGE_MEAN, IMAGE_STD
from bench.models.convnet import ConvNet


@dataclass(frozen=True)
class ImageEncoderConfig:
    """name: convnet | hf | timm.
    convnet: width, depth (trained from scratch).
    hf: path = a local transformers model directory (ViT, CLIP, ConvNeXt, ResNet, ...);
        attn_implementation 'eager' so double backward works on CPU.
    timm: timm_name (e.g. 'nfnet_l0'), path = optional local checkpoint file."""

    name: Literal["convnet", "hf", "timm"] = "convnet"
    width: int = 128
    depth: int = 3
    path: str | None = None
    timm_name: str | None = None
    attn_implementation: str = "eager"
    pretrained: bool = True

    def __post_init__(self) -> None:
        if self.name in ("hf",) and not self.path:
            raise ValueError("image_encoder.path must name a local model directory for name 'hf'")
        if self.name == "timm" and not self.timm_name:
            raise ValueError("image_encoder.timm_name is required for name 'timm'")
        if self.width < 1 or self.depth < 1:
            raise ValueError("image_encoder width and depth must be positive")


class _Renormalize(nn.Module):
    """Maps our normalisation onto the one a pretrained model was trained with."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        ours_mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
        ours_std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
        theirs_mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        theirs_std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # x_theirs = (x_ours * s + m - m') / s' = x_ours * a + b
        self.register_buffer("scale", ours_std / theirs_std, persistent=False)
        self.register_buffer("shift", (ours_mean - theirs_mean) / theirs_std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class HFImageEncoder(nn.Module):
    """A transformers vision model loaded from a local directory; returns its pooled feature."""

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, CLIPVisionModel

        directory = Path(cfg.path or "").expanduser()
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"image encoder directory {directory} has no config.json")
        hf_config = AutoConfig.from_pretrained(directory, local_files_only=True)
        kwargs = {"local_files_only": True, "attn_implementation": cfg.attn_implementation}
        cls = CLIPVisionModel if hf_config.model_type == "clip" else AutoModel
        if cfg.pretrained:
            self.model = cls.from_pretrained(directory, **kwargs)
        else:
            vision_config = hf_config.vision_config if hf_config.model_type == "clip" else hf_config
            self.model = cls.from_config(vision_config, attn_implementation=cfg.attn_implementation)
        mean, std = list(IMAGE_MEAN), list(IMAGE_STD)
        processor = directory / "preprocessor_config.json"
        if processor.is_file():
            data = json.loads(processor.read_text())
            mean, std = data.get("image_mean", mean), data.get("image_std", std)
        self.renormalize = _Renormalize(mean, std)
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        hidden = getattr(self.model.config, "hidden_size", None) or self.model.config.hidden_sizes[-1]
        self.out_dim = int(hidden)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = self.model(pixel_values=self.renormalize(images), **kwargs)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        return pooled.flatten(1)


class TimmImageEncoder(nn.Module):
    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise ImportError("image_encoder 'timm' needs the optional extra: pip install -e '.[timm]'") from exc
        self.model = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0)
        if cfg.pretrained and cfg.path:
            state = torch.load(Path(cfg.path).expanduser(), map_location="cpu", weights_only=True)
            missing, _ = self.model.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"checkpoint {cfg.path} lacks {len(missing)} weights of {cfg.timm_name}, e.g. {missing[:3]}")
        data_cfg = self.model.pretrained_cfg or {}
        self.renormalize = _Renormalize(list(data_cfg.get("mean", IMAGE_MEAN)), list(data_cfg.get("std", IMAGE_STD)))
        self.out_dim = int(self.model.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.renormalize(images))


def build_image_encoder(cfg: ImageEncoderConfig, resolution: int) -> nn.Module:
    if cfg.name == "convnet":
        return ConvNet(width=cfg.width, depth=cfg.depth, resolution=resolution)
    if cfg.name == "hf":
        return HFImageEncoder(cfg)
    return TimmImageEncoder(cfg)
