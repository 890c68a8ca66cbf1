"""From a dataset config to everything a run needs: decoded splits plus caption embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from bench.core.io import bytes_hash, stable_hash
from bench.data.embedded import EmbeddedSpec
from bench.data.embedded_cache import load_embedded
from bench.data.karpathy import KarpathySpec, check_karpathy, load_karpathy
from bench.data.pairs import PairSet, real_pairs
from bench.data.text_encoder import (
    TextEncoder,
    TextEncoderConfig,
    cached_caption_embeddings,
    model_identity,
)
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


def dataset_key(content_key: str, encoder_key: str) -> str:
    """The identity of a prepared dataset: its content (images and captions) and the text
    encoder that embedded the captions. Every cache derived from a prepared dataset (proxy
    models, expert trajectories, distillation checkpoints) is keyed by it, so switching the
    text encoder (another model, pooling, normalisation, max_length) never reuses them."""
    return stable_hash({"content": content_key, "text_encoder": encoder_key})


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset with the frozen text encoder's embedding of every caption of every split.

    ``encoder_key`` is :func:`bench.data.text_encoder.model_identity` of the encoder (set by
    :func:`prepare_dataset`); without it, :attr:`key` fingerprints the embeddings instead."""

    dataset: Dataset
    text_emb: dict[str, torch.Tensor]
    encoder_key: str | None = None

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def key(self) -> str:
        """The dataset key (:func:`dataset_key`) that every derived cache is keyed by."""
        encoder = self.encoder_key
        if encoder is None:
            encoder = bytes_hash(*(self.text_emb[s].contiguous().numpy().tobytes() for s in sorted(self.text_emb)))
        return dataset_key(self.dataset.content_key, encoder)

    @property
    def train(self) -> Split:
        return self.dataset.train

    @property
    def text_dim(self) -> int:
        return int(self.text_emb["train"].shape[1])

    def train_pairs(self, indices: torch.Tensor | None = None) -> PairSet:
        return real_pairs(self.dataset.train, self.text_emb["train"], indices)


def check_dataset_files(cfg: DatasetConfig) -> int:
    """Check what a dataset reads, without decoding a pixel or loading a model, and return its
    number of training pairs: the text encoder's directory holds a model
    (:class:`bench.data.text_encoder.TextEncoderError`); for Karpathy data, the annotations
    parse and every image file is there (phases 1 and 2 of :mod:`bench.data.karpathy`,
    :class:`bench.data.karpathy.AnnotationError`). So a run learns that a budget is too large,
    or a file missing, before it spends minutes decoding images."""
    cfg.text_encoder.model_dir()
    if cfg.source == "embedded":
        return cfg.embedded.n_train_images * cfg.embedded.captions_per_image
    return len(check_karpathy(cfg.karpathy).split("train").captions)  # type: ignore[arg-type]


def load_dataset(cfg: DatasetConfig, cache_dir: str | Path, progress: bool = False) -> Dataset:
    if cfg.source == "embedded":
        return load_embedded(cfg.embedded, cache_dir)
    return load_karpathy(cfg.karpathy, cache_dir, progress=progress)  # type: ignore[arg-type]


def prepare_dataset(
    cfg: DatasetConfig, cache_dir: str | Path, device: torch.device | str = "cpu", progress: bool = False
) -> PreparedDataset:
    dataset = load_dataset(cfg, cache_dir, progress)
    encoder = TextEncoder(cfg.text_encoder, device)
    identity = model_identity(cfg.text_encoder)
    text_emb = {}
    for split_name in ("train", "val", "test"):
        captions = dataset.split(split_name).captions
        text_emb[split_name] = cached_caption_embeddings(
            cfg.text_encoder, captions, cache_dir, device, progress, encoder=encoder,
            label=f"{dataset.name}-{split_name}", identity=identity,
        )
    return PreparedDataset(dataset, text_emb, identity)
