"""Expert trajectories: students trained on all pairs, their parameters saved every epoch.

Trajectory matching needs, for a start epoch s and a horizon E, an expert's parameters at s
and at s + E. We save the trainable parameters at the start (epoch 0) and after each of the
first ``epochs`` epochs (only the epochs that matching can reach), one safetensors file per
expert with the recipe's hash in its metadata. Experts are a shared artifact per dataset +
model + recipe: trained once (in parallel as Ray tasks), skipped when already on disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.core.config import to_dict
from bench.core.io import discard_corrupt, stable_hash, write_atomic
from bench.data.datasets import PreparedDataset
from bench.models.student import ModelConfig, Student, build_student
from bench.protocol.augment import AugmentConfig
from bench.protocol.train import (
    TrainConfig,
    check_contrastive_batch,
    check_learning_rates,
    check_momentum,
    train_student,
)


@dataclass(frozen=True)
class ExpertConfig:
    """n_experts students trained for ``epochs`` epochs (>= max_start_epoch + expert_epochs of
    every distillation method that reads them) with plain SGD (momentum 0 by default, like the
    unrolled inner loop of matching); expert i uses seed ``seed + i``. augment: the
    differentiable augmentation of every batch (:mod:`bench.protocol.augment`; None = off), usually the
    one the matching's inner loop uses."""

    n_experts: int = 3
    epochs: int = 3
    batch_size: int = 128
    lr_image: float = 0.1
    lr_text: float = 0.1
    momentum: float = 0.0
    seed: int = 1000
    augment: AugmentConfig | None = field(default=None, metadata={"omit_if_default": True})

    def __post_init__(self) -> None:
        if self.n_experts < 1 or self.epochs < 1:
            raise ValueError("experts.n_experts and experts.epochs must be positive")
        check_contrastive_batch(self.batch_size)
        check_momentum(self.momentum)
        check_learning_rates(self.lr_image, self.lr_text)
        if self.seed < 0:  # expert i draws from seed + i; numpy's generators refuse negative seeds
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """The full-data recipe with this expert schedule; always SGD (the matcher unrolls SGD)."""
        return replace(base, epochs=self.epochs, batch_size=self.batch_size, optimizer="sgd",
                       lr_image=self.lr_image, lr_text=self.lr_text, momentum=self.momentum, augment=self.augment)


def expert_key(data: PreparedDataset, model_cfg: ModelConfig, cfg: ExpertConfig, base: TrainConfig) -> str:
    """Keyed by the dataset key (content + text encoder, :attr:`PreparedDataset.key`)."""
    return stable_hash({"dataset": data.key, "model": to_dict(model_cfg),
                        "recipe": to_dict(cfg.train_config(base)), "seed": cfg.seed, "version": 2})


def expert_dir(cache_dir: str | Path, data: PreparedDataset, key: str) -> Path:
    return Path(cache_dir) / "experts" / f"{data.name}-{key}"


def expert_path(directory: Path, index: int) -> Path:
    return directory / f"expert_{index:03d}.safetensors"


def expert_file_problem(path: Path, key: str | None, epochs: int) -> str | None:
    """Why the expert file ``path`` cannot serve recipe ``key`` (None: any) with ``epochs``
    recorded epochs (unreadable or truncated, another recipe, epochs missing), or None. Reads
    only the safetensors header, which also proves the file is as long as the header says."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, names = f.metadata() or {}, list(f.keys())
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        return f"{type(exc).__name__}: {exc}"
    if key is not None and metadata.get("expert_key") != key:
        return "it was made by another recipe (expert_key mismatch)"
    missing = [e for e in range(epochs + 1) if not any(n.startswith(f"{e:03d}/") for n in names)]
    return f"epoch(s) {missing} are not recorded" if missing else None


def _snapshot(student: Student) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in student.trainable_parameters().items()}


def train_expert(
    data: PreparedDataset, model_cfg: ModelConfig, cfg: ExpertConfig, base: TrainConfig,
    index: int, cache_dir: str | Path, device: torch.device, progress: bool = False,
) -> Path:
    """Train expert ``index`` unless a valid file exists (an unusable one is reported, removed
    and retrained); returns the file."""
    key = expert_key(data, model_cfg, cfg, base)
    path = expert_path(expert_dir(cache_dir, data, key), index)
    if path.is_file():
        problem = expert_file_problem(path, key, cfg.epochs)
        if problem is None:
            return path
        discard_corrupt(path, "expert trajectory", problem)
    seed = cfg.seed + index
    student = build_student(model_cfg, data.train.resolution, data.text_dim, seed)
    tensors = {f"{0:03d}/{name}": t for name, t in _snapshot(student).items()}

    def record(epoch: int, s: Student) -> None:
        tensors.update({f"{epoch:03d}/{name}": t for name, t in _snapshot(s).items()})

    start = time.perf_counter()
    train_student(student, data.train_pairs(), cfg.train_config(base), seed, device,
                  on_epoch_end=record, progress=progress, description=f"expert {index}")
    metadata = {"expert_key": key, "epochs": str(cfg.epochs), "seed": str(seed), "dataset": data.name,
                "train_seconds": f"{time.perf_counter() - start:.2f}", "device": str(device)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


class TrajectoryBuffer:
    """Read access to a dataset's expert files (lazily: one epoch's tensors at a time)."""

    def __init__(self, directory: Path, n_experts: int, epochs: int, key: str) -> None:
        self.paths = [expert_path(directory, i) for i in range(n_experts)]
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"expert trajectories missing: {missing[0]} (and {len(missing) - 1} more)")
        for path in self.paths:  # readable and complete; the recipe is checked on every read
            problem = expert_file_problem(path, None, epochs)
            if problem is not None:
                discard_corrupt(path, "expert trajectory", problem)
                raise ValueError(f"expert trajectory {path} is unusable ({problem}); it was removed and is "
                                 "retrained when the cell runs again")
        self.epochs = epochs
        self.key = key

    def __len__(self) -> int:
        return len(self.paths)

    def params(self, expert: int, epoch: int) -> dict[str, torch.Tensor]:
        if not 0 <= epoch <= self.epochs:
            raise IndexError(f"epoch {epoch} outside the recorded 0..{self.epochs}")
        prefix = f"{epoch:03d}/"
        with safe_open(str(self.paths[expert]), framework="pt") as f:
            if f.metadata().get("expert_key") != self.key:
                raise ValueError(f"{self.paths[expert]} was made by another recipe (key mismatch)")
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}

    def train_seconds(self) -> list[float | None]:
        """How long each expert took to train (from its file's metadata; None if not recorded)."""
        out: list[float | None] = []
        for path in self.paths:
            with safe_open(str(path), framework="pt") as f:
                seconds = f.metadata().get("train_seconds")
            out.append(None if seconds is None else float(seconds))
        return out

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)


def ensure_experts(
    data: PreparedDataset, model_cfg: ModelConfig, cfg: ExpertConfig, base: TrainConfig,
    cache_dir: str | Path, device: torch.device, progress: bool = False,
) -> TrajectoryBuffer:
    """Train the missing experts here (sequentially) and open the buffer."""
    for i in range(cfg.n_experts):
        train_expert(data, model_cfg, cfg, base, i, cache_dir, device, progress)
    return open_buffer(data, model_cfg, cfg, base, cache_dir)


def open_buffer(data: PreparedDataset, model_cfg: ModelConfig, cfg: ExpertConfig, base: TrainConfig,
                cache_dir: str | Path) -> TrajectoryBuffer:
    key = expert_key(data, model_cfg, cfg, base)
    return TrajectoryBuffer(expert_dir(cache_dir, data, key), cfg.n_experts, cfg.epochs, key)
