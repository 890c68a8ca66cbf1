"""From a dataset config to everything a run needs: decoded splits plus caption embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from bench.data.embedded import EmbeddedSpec, generate_embedded
from bench.data.karpathy import KarpathySpec, load_karpathy
from bench.data.pairs import PairSet, real_pairs
from bench.data.text_encoder import TextEncoder, TextEncoderConfig, cached_caption_embeddings
from bench.data.types import Dataset, Split


@dataclass(frozen=True)
class DatasetConfig:
    """source 'embedded' (procedural, no download) or 'karpathy' (Flickr30K/COCO JSON + images)."""

    source: Literal["embedded", "karpathy"] = "embedded"
    embedded: EmbeddedSpec = field(default_factory=EmbeddedSpec)
    karpathy: KarpathySpec | None = None
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    def __post_init__(self) -> None:
        if self.source == "karpathy" and self.karpathy is None:
            raise ValueError("source 'karpathy' needs a 'karpathy' section (name, train_json, ..., image_root)")

    @property
    def name(self) -> str:
        return "embedded" if self.source == "embedded" else self.karpathy.name  # type: ignore[union-attr]

    @property
    def resolution(self) -> int:
        return self.embedded.resolution if self.source == "embedded" else self.karpathy.resolution  # type: ignore[union-attr]


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset with the frozen text encoder's embedding of every caption of every split."""

    dataset: Dataset
    text_emb: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def train(self) -> Split:
        return self.dataset.train

    @property
    def text_dim(self) -> int:
        return int(self.text_emb["train"].shape[1])

    def train_pairs(self, indices: torch.Tensor | None = None) -> PairSet:
        return real_pairs(self.dataset.train, self.text_emb["train"], indices)


def load_dataset(cfg: DatasetConfig, cache_dir: str | Path, progress: bool = False) -> Dataset:
    if cfg.source == "embedded":
        return generate_embedded(cfg.embedded)
    return load_karpathy(cfg.karpathy, cache_dir, progress=progress)  # type: ignore[arg-type]


def prepare_dataset(
    cfg: DatasetConfig, cache_dir: str | Path, device: torch.device | str = "cpu", progress: bool = False
) -> PreparedDataset:
    dataset = load_dataset(cfg, cache_dir, progress)
    encoder = TextEncoder(cfg.text_encoder, device)
    text_emb = {}
    for split_name in ("train", "val", "test"):
        captions = dataset.split(split_name).captions
        text_emb[split_name] = cached_caption_embeddings(
            cfg.text_encoder, captions, cache_dir, device, progress, encoder=encoder
        )
    return PreparedDataset(dataset, text_emb)
