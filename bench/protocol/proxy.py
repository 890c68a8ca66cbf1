"""The proxy model that coreset methods read: the student recipe trained briefly on all pairs.

One proxy run yields what coresets need: per-pair features (L2-normalised image embedding ++
text embedding from the trained proxy), forgetting statistics collected while it trained, and
every pair's similarities to a fixed seeded gallery of pairs after chosen early epochs (what
EL2N scores read). It is cached on disk per dataset key (content + text encoder), model,
recipe (gallery epochs and size included) and seed; a cache file that cannot be read back is
reported, removed and computed again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from bench.core.config import to_dict
from bench.core.io import load_torch_or_none, stable_hash, torch_save_atomic
from bench.data.datasets import PreparedDataset
from bench.data.pairs import PairSet
from bench.models.student import ModelConfig, Student, build_student
from bench.protocol.embed import embed_pairs
from bench.protocol.train import (
    TrainConfig,
    check_contrastive_batch,
    check_learning_rates,
    train_student,
)


@dataclass(frozen=True)
class ProxyConfig:
    """How the proxy is trained (defaults: the evaluation's full-data recipe, shortened).

    gallery_epochs: after which epochs (1-based, increasing, at most ``epochs``) every pair's
    similarities to the gallery are recorded (:class:`GalleryRows`; EL2N reads them early in
    training, so the default is the first epoch; empty: none). gallery_size: the negatives each
    pair is compared with, 127 by default (a batch of 128, like the contrastive loss sees)."""

    epochs: int = 3
    batch_size: int = 128
    lr_image: float = 0.1
    lr_text: float = 0.1
    gallery_epochs: tuple[int, ...] = field(default=(1,), metadata={"omit_if_default": True})
    gallery_size: int = field(default=127, metadata={"omit_if_default": True})

    def __post_init__(self) -> None:  # checked at load, not when the first proxy trains
        if self.epochs < 1:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        check_contrastive_batch(self.batch_size)
        check_learning_rates(self.lr_image, self.lr_text)
        epochs = tuple(self.gallery_epochs)
        if any(not 1 <= e <= self.epochs for e in epochs) or list(epochs) != sorted(set(epochs)):
            raise ValueError(f"gallery_epochs must be increasing epochs between 1 and epochs={self.epochs}, "
                             f"got {list(epochs)}")
        if self.gallery_size < 1:
            raise ValueError(f"gallery_size must be at least 1, got {self.gallery_size}")

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


@dataclass(frozen=True)
class GalleryRows:
    """Every pair's cosine similarities, after some early proxy epochs, to one fixed gallery.

    gallery: (m,) sorted pair indices, m = min(gallery_size + 1, n_pairs), drawn from the proxy
    seed. A pair's negatives are the gallery without itself: all members but itself when it is
    a member, else all but the last member (:meth:`excluded`), so every pair is compared with
    the same m - 1 others. positive: (E, n) float32 cos(image_i, text_i); image_to_text:
    (E, n, m) float16 cos(image_i, text_g); text_to_image: (E, n, m) float16 cos(text_i,
    image_g) (float16: a cosine to 5e-4, half the cache). logit_scale: what the proxy's loss
    multiplied these cosines by (1 / temperature). Row e of each array is epoch ``epochs[e]``.
    """

    epochs: tuple[int, ...]
    gallery: np.ndarray
    positive: np.ndarray
    image_to_text: np.ndarray
    text_to_image: np.ndarray
    logit_scale: float

    def excluded(self) -> np.ndarray:
        """(n,) the gallery column that is not a negative of each pair: its own, else the last."""
        n, m = self.positive.shape[1], len(self.gallery)
        column = np.full(n, m - 1, dtype=np.int64)
        column[self.gallery] = np.arange(m)
        return column

    def epoch_rows(self, epochs: tuple[int, ...] | None) -> list[int]:
        """The row of each requested epoch (None: every recorded one); an epoch the proxy did not
        record is an error that says which it did and where to ask for more."""
        if epochs is None:
            return list(range(len(self.epochs)))
        missing = [e for e in epochs if e not in self.epochs]
        if missing:
            raise ValueError(f"the proxy recorded gallery similarities after epochs {list(self.epochs)}, not "
                             f"{missing}; add them to proxy.gallery_epochs")
        return [self.epochs.index(e) for e in epochs]


class GalleryRecorder:
    """An ``on_epoch_end`` hook recording :class:`GalleryRows`. After each listed epoch it
    embeds every pair in eval mode (no dropout, no random draw) and puts the student back in
    train mode, so the training that follows is exactly the one without the recorder."""

    def __init__(self, pairs: PairSet, epochs: tuple[int, ...], size: int, seed: int,
                 device: torch.device, logit_scale: float) -> None:
        n = len(pairs)
        self.pairs, self.epochs, self.device, self.logit_scale = pairs, tuple(epochs), device, logit_scale
        rng = np.random.default_rng([seed, 2])  # a stream of its own: the proxy's other draws are torch's
        self.gallery = np.sort(rng.choice(n, size=min(size + 1, n), replace=False)).astype(np.int64)
        self._rows: dict[str, list[np.ndarray]] = {"positive": [], "image_to_text": [], "text_to_image": []}

    def __call__(self, epoch: int, student: Student) -> None:
        if epoch not in self.epochs:
            return
        image, text = embed_pairs(student, self.pairs, self.device)
        student.train()
        members = torch.as_tensor(self.gallery)
        self._rows["positive"].append((image * text).sum(dim=1).numpy().astype(np.float32))
        self._rows["image_to_text"].append((image @ text[members].T).numpy().astype(np.float16))
        self._rows["text_to_image"].append((text @ image[members].T).numpy().astype(np.float16))

    def rows(self) -> GalleryRows | None:
        """What was recorded (None when no epoch was asked for)."""
        if not self.epochs:
            return None
        stacked = {name: np.stack(arrays) for name, arrays in self._rows.items()}
        return GalleryRows(self.epochs, self.gallery, logit_scale=self.logit_scale, **stacked)


#: Forgetting scores are degenerate when more than this fraction of the pairs was never learned:
#: the coreset is then mostly a random draw among them (say so, and train the proxy longer).
DEGENERATE_NEVER_LEARNED = 0.5


@dataclass(frozen=True)
class ProxyRun:
    features: np.ndarray  # (n_pairs, 2 * embed_dim) float32: image embedding ++ text embedding
    forgetting_counts: np.ndarray  # (n_pairs,) int64
    ever_learned: np.ndarray  # (n_pairs,) bool
    info: dict = field(default_factory=dict)
    gallery: GalleryRows | None = None  # None: recorded after no epoch (proxy.gallery_epochs empty)

    def forgetting_summary(self) -> dict[str, object]:
        """How informative the forgetting scores are: the fraction of pairs never learned, the
        histogram of forgetting counts of the learned ones ({count: pairs}), and whether the
        scores are degenerate (more than half never learned)."""
        never = float(1.0 - self.ever_learned.mean()) if len(self.ever_learned) else 0.0
        values, pairs = np.unique(self.forgetting_counts[self.ever_learned], return_counts=True)
        return {"never_learned_fraction": round(never, 4),
                "count_histogram": {str(int(v)): int(c) for v, c in zip(values, pairs)},
                "epochs": self.info.get("epochs"), "degenerate": never > DEGENERATE_NEVER_LEARNED}

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(image, text) embeddings of every pair: the two halves of ``features`` (the student
        maps both sides into one space of embed_dim dimensions), views, no copy."""
        d = self.features.shape[1]
        if d % 2:
            raise ValueError(f"proxy features of odd width {d} are not image ++ text embeddings of one width")
        return self.features[:, : d // 2], self.features[:, d // 2 :]

    def gallery_rows(self) -> GalleryRows:
        if self.gallery is None:
            raise ValueError("this proxy run recorded no gallery similarities; set proxy.gallery_epochs")
        return self.gallery


def proxy_key(data: PreparedDataset, model_cfg: ModelConfig, cfg: ProxyConfig, base: TrainConfig, seed: int) -> str:
    """Everything a cached proxy run depends on: dataset key, model, training recipe (``cfg``
    over the evaluation's ``base``), the gallery recorded, seed and the layout version."""
    return stable_hash({"dataset": data.key, "model": to_dict(model_cfg), "train": to_dict(cfg.train_config(base)),
                        "gallery": {"epochs": list(cfg.gallery_epochs), "size": cfg.gallery_size},
                        "seed": seed, "version": 3})  # 3: gallery similarities recorded


def proxy_path(cache_dir: str | Path, data: PreparedDataset, key: str) -> Path:
    return Path(cache_dir) / "proxy" / f"{data.name}-{key}.pt"


_PROXY_FIELDS = ("features", "forgetting_counts", "ever_learned", "info", "gallery")


def _check_proxy(n_pairs: int) -> Callable[[object], str | None]:
    """What :func:`load_torch_or_none` asks of a cached proxy run of ``n_pairs`` pairs."""

    def check(blob: object) -> str | None:
        if not isinstance(blob, dict) or set(blob) != set(_PROXY_FIELDS):
            return f"not a proxy run (expected the keys {', '.join(_PROXY_FIELDS)})"
        rows = {k: getattr(blob[k], "shape", (None,))[0] for k in _PROXY_FIELDS[:3]}
        if any(r != n_pairs for r in rows.values()):
            return f"it covers {rows} pairs, the dataset has {n_pairs}"
        gallery = blob["gallery"]
        if gallery is not None:
            names = {f.name for f in fields(GalleryRows)}
            if not isinstance(gallery, dict) or set(gallery) != names:
                return f"its gallery is not a mapping of {', '.join(sorted(names))}"
            shape = (len(gallery["epochs"]), n_pairs)
            wide = (*shape, len(gallery["gallery"]))
            if (gallery["positive"].shape, gallery["image_to_text"].shape, gallery["text_to_image"].shape) != \
                    (shape, wide, wide):
                return f"its gallery similarities are not {shape} and {wide} arrays"
        return None
    return check


def compute_proxy(
    data: PreparedDataset, model_cfg: ModelConfig, cfg: ProxyConfig, base: TrainConfig, seed: int,
    device: torch.device, progress: bool = False,
) -> ProxyRun:
    pairs = data.train_pairs()
    train_cfg = cfg.train_config(base)
    student = build_student(model_cfg, data.train.resolution, data.text_dim, seed)
    tracker = ForgettingTracker(len(pairs))
    recorder = GalleryRecorder(pairs, cfg.gallery_epochs, cfg.gallery_size, seed, device, train_cfg.logit_scale)
    train_student(student, pairs, train_cfg, seed, device, on_epoch_end=recorder, on_batch_end=tracker.update,
                  progress=progress, description=f"proxy seed {seed}")
    image_emb, text_emb = embed_pairs(student, pairs, device)
    features = torch.cat([image_emb, text_emb], dim=1).numpy().astype(np.float32)
    return ProxyRun(features, tracker.counts, tracker.ever_learned, {"seed": seed, "epochs": train_cfg.epochs},
                    recorder.rows())


def load_or_compute_proxy(
    data: PreparedDataset, model_cfg: ModelConfig, cfg: ProxyConfig, base: TrainConfig, seed: int,
    device: torch.device, cache_dir: str | Path, progress: bool = False,
) -> ProxyRun:
    """The proxy run of recipe ``cfg`` (over the evaluation's full-data recipe ``base``), read
    from the cache or trained and cached."""
    path = proxy_path(cache_dir, data, proxy_key(data, model_cfg, cfg, base, seed))
    blob = load_torch_or_none(path, "proxy cache", check=_check_proxy(data.train.n_captions))
    if blob is not None:
        gallery = blob.pop("gallery")
        return ProxyRun(**blob, gallery=None if gallery is None else GalleryRows(**gallery))
    run = compute_proxy(data, model_cfg, cfg, base, seed, device, progress)
    gallery = None if run.gallery is None else {f.name: getattr(run.gallery, f.name) for f in fields(run.gallery)}
    torch_save_atomic(path, {"features": run.features, "forgetting_counts": run.forgetting_counts,
                             "ever_learned": run.ever_learned, "info": run.info, "gallery": gallery})
    return run
