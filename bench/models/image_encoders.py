"""Image encoders by name: 'convnet' (from scratch), 'hf' (local transformers), 'timm' (optional).

Every encoder takes images normalised with ``bench.data.types.IMAGE_MEAN/IMAGE_STD`` and
returns a flat feature vector; ``out_dim`` tells the student how wide it is. timm is imported
only when a config asks for it (it needs torchvision, which has no CPU build here).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from bench.core.config import PATH_FIELD
from bench.data.types import IMAGE_MEAN, IMAGE_STD
from bench.models.convnet import ConvNet, resolution_problem
from bench.models.lora import BASE_SEED, LoraConfig, apply_lora, check_missing_weights


@dataclass(frozen=True)
class ImageEncoderConfig:
    """name: convnet | hf | timm.
    convnet: width, depth; path = optional weights (a state_dict file, or ``package:<name>`` for
        weights shipped in ``bench/models/weights/``), else trained from scratch.
    hf: path = a local transformers model directory (ViT, CLIP, ConvNeXt, ResNet, ...);
        attn_implementation 'eager' so double backward works on CPU ('sdpa' works too: the
        matcher's inner loop runs under the math SDPA backend, see bench/models/lora.py);
        lora = a :class:`LoraConfig` to train low-rank adapters of the frozen tower instead of
        the whole tower (None: full fine-tuning).
    timm: timm_name (e.g. 'nfnet_l0'), path = optional local checkpoint file.
    freeze: the tower is a fixed feature extractor (no trainable parameter, always in eval
        mode); the student then needs a trainable image projection (``embed_dim``)."""

    name: Literal["convnet", "hf", "timm"] = "convnet"
    width: int = 128
    depth: int = 3
    path: str | None = field(default=None, metadata=PATH_FIELD)
    timm_name: str | None = None
    attn_implementation: str = "eager"
    pretrained: bool = True
    # Left out of to_dict (and so of config hashes) while None: records and expert caches made
    # before the field existed stay valid.
    lora: LoraConfig | None = field(default=None, metadata={"omit_if_default": True})
    freeze: bool = field(default=False, metadata={"omit_if_default": True})

    def __post_init__(self) -> None:
        if self.lora is not None and self.name != "hf":
            raise ValueError(f"lora is only supported for name 'hf' (a transformers image tower), not {self.name!r}")
        if self.name in ("hf",) and not self.path:
            raise ValueError("image_encoder.path must name a local model directory for name 'hf'")
        if self.name == "timm" and not self.timm_name:
            raise ValueError("image_encoder.timm_name is required for name 'timm'")
        if self.width < 1 or self.depth < 1:
            raise ValueError("image_encoder width and depth must be positive")
        if self.freeze and self.lora is not None:
            raise ValueError("freeze and lora exclude each other (lora already freezes the tower's own weights)")


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

        def load() -> tuple[nn.Module, list[str]]:
            if cfg.pretrained:
                model, info = cls.from_pretrained(directory, output_loading_info=True, **kwargs)
                return model, sorted(info.get("missing_keys", ()))
            vision_config = hf_config.vision_config if hf_config.model_type == "clip" else hf_config
            return cls.from_config(vision_config, attn_implementation=cfg.attn_implementation), []

        if cfg.lora is None:
            model, _ = load()
        else:
            # The frozen tower must not depend on the student seed (expert files hold only the
            # adapters): load it under a fixed seed, in a fork so the adapters' initialisation
            # (drawn next, from the student seed) does not depend on what loading drew.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(BASE_SEED)
                model, missing = load()
            check_missing_weights(missing, cfg.lora)
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        hidden = getattr(model.config, "hidden_size", None) or model.config.hidden_sizes[-1]
        self.out_dim = int(hidden)
        self.model = model if cfg.lora is None else apply_lora(model, cfg.lora)
        mean, std = list(IMAGE_MEAN), list(IMAGE_STD)
        processor = directory / "preprocessor_config.json"
        if processor.is_file():
            data = json.loads(processor.read_text())
            mean, std = data.get("image_mean", mean), data.get("image_std", std)
        self.renormalize = _Renormalize(mean, std)

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
            state = load_state_dict(cfg.path)
            missing, _ = self.model.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"checkpoint {cfg.path} lacks {len(missing)} weights of {cfg.timm_name}, e.g. {missing[:3]}")
        data_cfg = self.model.pretrained_cfg or {}
        self.renormalize = _Renormalize(list(data_cfg.get("mean", IMAGE_MEAN)), list(data_cfg.get("std", IMAGE_STD)))
        self.out_dim = int(self.model.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.renormalize(images))


def encoder_fit_problem(cfg: ImageEncoderConfig, resolution: int) -> str | None:
    """Why the tower cannot take images of ``resolution`` pixels, or None (a config check: no
    file is read)."""
    if cfg.name == "convnet":
        problem = resolution_problem(resolution, cfg.depth)
        return f"{problem} (image_encoder.depth {cfg.depth})" if problem else None
    return None


def encoder_files_problem(cfg: ImageEncoderConfig) -> str | None:
    """Why the tower's files cannot be used (a missing weights file or model directory, a file
    that is not a weights file), or None; reads at most a file's header."""
    if cfg.name == "hf":
        directory = Path(cfg.path or "").expanduser()
        if not (directory / "config.json").is_file():
            return f"image_encoder.path {cfg.path!r}: not a transformers model directory (no config.json)"
        return None
    if cfg.path and (cfg.name == "convnet" or cfg.pretrained):
        try:
            _check_weights_file(resolve_weights(cfg.path))
        except (FileNotFoundError, ValueError) as exc:
            return str(exc)
    return None


def _check_weights_file(path: Path) -> None:
    """Raise ValueError naming ``path`` when it is not a safetensors or torch weights file."""
    import zipfile

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt"):
                return
        if not zipfile.is_zipfile(path):  # torch.save's format; anything else is refused by torch.load
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors and torch raise their own types
        raise ValueError(f"image_encoder.path {str(path)!r} is not a readable weights file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def resolve_weights(path: str) -> Path:
    """A weights path: ``package:<file>`` names a file shipped in ``bench/models/weights/``."""
    if path.startswith("package:"):
        name = path.split(":", 1)[1]
        resolved = Path(__file__).resolve().parent / "weights" / name
        if not resolved.is_file():
            shipped = sorted(p.name for p in resolved.parent.glob("*") if p.is_file() and not p.name.startswith("."))
            raise FileNotFoundError(f"image_encoder.path {path!r}: no such shipped weights file (shipped: {shipped})")
        return resolved
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"image_encoder.path {path!r}: no such weights file")
    return resolved


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from a safetensors or torch file (an unreadable one: a ValueError naming it)."""
    resolved = resolve_weights(path)
    _check_weights_file(resolved)
    if resolved.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(resolved))
    return torch.load(resolved, map_location="cpu", weights_only=True)


def _convnet(cfg: ImageEncoderConfig, resolution: int) -> ConvNet:
    net = ConvNet(width=cfg.width, depth=cfg.depth, resolution=resolution)
    if cfg.path:
        try:
            net.load_state_dict(load_state_dict(cfg.path))
        except RuntimeError as exc:  # missing, unexpected or mis-shaped weights
            raise ValueError(f"image_encoder.path {cfg.path!r} does not fit a ConvNet of width {cfg.width} and depth "
                             f"{cfg.depth}: {exc}") from None
    return net


def build_image_encoder(cfg: ImageEncoderConfig, resolution: int) -> nn.Module:
    if cfg.name == "convnet":
        encoder: nn.Module = _convnet(cfg, resolution)
    elif cfg.name == "hf":
        encoder = HFImageEncoder(cfg)
    else:
        encoder = TimmImageEncoder(cfg)
    if cfg.freeze:
        encoder.requires_grad_(False).eval()
    return encoder
