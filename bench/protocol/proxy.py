"""The proxy model that coreset methods read: the student recipe trained briefly on all pairs.

One proxy run yields both things coresets need: per-pair features (L2-normalised image
embedding ++ text embedding from the trained proxy) and forgetting statistics collected while
it trained. It is cached on disk per dataset key (content + text encoder), model, recipe and seed; a cache
file that cannot be read back is reported, removed and computed again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from bench.core.config import to_dict
from bench.core.io import load_torch_or_none, stable_hash, torch_save_atomic
from bench.data.datasets import PreparedDataset
from bench.models.student import ModelConfig, build_student
from bench.protocol.embed import embed_pairs
from bench.protocol.train import TrainConfig, check_contrastive_batch, train_student


@dataclass(frozen=True)
class ProxyConfig:
    """How the proxy is trained (defaults: the evaluation's full-data recipe, shortened)."""

    epochs: int = 3
    batch_size: int = 128
    lr_image: float = 0.1
    lr_text: float = 0.1

    def __post_init__(self) -> None:  # checked at load, not when the first proxy trains
        if self.epochs < 1:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        check_contrastive_batch(self.batch_size)
        if self.lr_image < 0 or self.lr_text < 0:
            raise ValueError("learning rates must be >= 0")

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return replace(base, epochs=self.epochs, batch_size=self.batch_size,
                       lr_image=self.lr_image, lr_text=self.lr_text)


class ForgettingTracker:
    """Counts learned -> not-learned transitions per pair (Toneva et al., adapted to pairs).

    A pair is *learned* at a presentation when, within its batch, its image ranks its own
    caption first and its caption ranks its own image first.
    """

    def __init__(self, n_pairs: int) -> None:
        self.counts = np.zeros(n_pairs, dtype=np.int64)
        self.ever_learned = np.zeros(n_pairs, dtype=bool)
        self._last = np.zeros(n_pairs, dtype=bool)

    def update(self, pair_indices: torch.Tensor, logits: torch.Tensor) -> None:
        diag = torch.arange(logits.shape[0], device=logits.device)
        learned = (logits.argmax(dim=1) == diag) & (logits.argmax(dim=0) == diag)
        idx = pair_indices.cpu().numpy()
        now = learned.cpu().numpy()
        self.counts[idx] += self._last[idx] & ~now
        self.ever_learned[idx] |= now
        self._last[idx] = now


#: Forgetting scores are degenerate when more than this fraction of the pairs was never learned:
#: the coreset is then mostly a random draw among them (say so, and train the proxy longer).
DEGENERATE_NEVER_LEARNED = 0.5


@dataclass(frozen=True)
class ProxyRun:
    features: np.ndarray  # (n_pairs, d_img + d_txt) float32
    forgetting_counts: np.ndarray  # (n_pairs,) int64
    ever_learned: np.ndarray  # (n_pairs,) bool
    info: dict = field(default_factory=dict)

    def forgetting_summary(self) -> dict[str, object]:
        """How informative the forgetting scores are: the fraction of pairs never learned, the
        histogram of forgetting counts of the learned ones ({count: pairs}), and whether the
        scores are degenerate (more than half never learned)."""
        never = float(1.0 - self.ever_learned.mean()) if len(self.ever_learned) else 0.0
        values, pairs = np.unique(self.forgetting_counts[self.ever_learned], return_counts=True)
        return {"never_learned_fraction": round(never, 4),
                "count_histogram": {str(int(v)): int(c) for v, c in zip(values, pairs)},
                "epochs": self.info.get("epochs"), "degenerate": never > DEGENERATE_NEVER_LEARNED}


def proxy_key(data: PreparedDataset, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int) -> str:
    return stable_hash({"dataset": data.key, "model": to_dict(model_cfg), "train": to_dict(train_cfg),
                        "seed": seed, "version": 2})


def proxy_path(cache_dir: str | Path, data: PreparedDataset, key: str) -> Path:
    return Path(cache_dir) / "proxy" / f"{data.name}-{key}.pt"


_PROXY_FIELDS = ("features", "forgetting_counts", "ever_learned", "info")


def _check_proxy(n_pairs: int) -> Callable[[object], str | None]:
    """What :func:`load_torch_or_none` asks of a cached proxy run of ``n_pairs`` pairs."""

    def check(blob: object) -> str | None:
        if not isinstance(blob, dict) or set(blob) != set(_PROXY_FIELDS):
            return f"not a proxy run (expected the keys {', '.join(_PROXY_FIELDS)})"
        rows = {k: getattr(blob[k], "shape", (None,))[0] for k in _PROXY_FIELDS[:3]}
        if any(r != n_pairs for r in rows.values()):
            return f"it covers {rows} pairs, the dataset has {n_pairs}"
        return None
    return check


def compute_proxy(
    data: PreparedDataset, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int,
    device: torch.device, progress: bool = False,
) -> ProxyRun:
    pairs = data.train_pairs()
    student = build_student(model_cfg, data.train.resolution, data.text_dim, seed)
    tracker = ForgettingTracker(len(pairs))
    train_student(student, pairs, train_cfg, seed, device, on_batch_end=tracker.update,
                  progress=progress, description=f"proxy seed {seed}")
    image_emb, text_emb = embed_pairs(student, pairs, device)
    features = torch.cat([image_emb, text_emb], dim=1).numpy().astype(np.float32)
    return ProxyRun(features, tracker.counts, tracker.ever_learned, {"seed": seed, "epochs": train_cfg.epochs})


def load_or_compute_proxy(
    data: PreparedDataset, model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int,
    device: torch.device, cache_dir: str | Path, progress: bool = False,
) -> ProxyRun:
    path = proxy_path(cache_dir, data, proxy_key(data, model_cfg, train_cfg, seed))
    blob = load_torch_or_none(path, "proxy cache", check=_check_proxy(data.train.n_captions))
    if blob is not None:
        return ProxyRun(**blob)
    run = compute_proxy(data, model_cfg, train_cfg, seed, device, progress)
    torch_save_atomic(path, {"features": run.features, "forgetting_counts": run.forgetting_counts,
                             "ever_learned": run.ever_learned, "info": run.info})
    return run
