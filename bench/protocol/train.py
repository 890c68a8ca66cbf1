"""The one contrastive trainer: every student (evaluation, proxy, expert) is trained here."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from bench.core.progress import make_progress
from bench.data.pairs import PairSet
from bench.models.losses import contrastive_loss
from bench.models.student import Student, tower_features
from bench.protocol.augment import AugmentConfig, augment_batch


def check_contrastive_batch(batch_size: int, key: str = "batch_size") -> None:
    """A contrastive batch needs negatives: with one pair per batch the loss is 0 and nothing
    trains (the run would end "successfully" with an untrained student)."""
    if batch_size < 2:
        raise ValueError(f"{key} must be >= 2 (a contrastive batch needs at least one negative pair), got {batch_size}")


def check_learning_rates(lr_image: float, lr_text: float) -> None:
    """A negative learning rate would ascend the loss; 0 holds that side fixed."""
    if lr_image < 0 or lr_text < 0:
        raise ValueError(f"learning rates must be >= 0, got lr_image {lr_image}, lr_text {lr_text}")


def check_momentum(momentum: float, key: str = "momentum") -> None:
    """SGD momentum in [0, 1): at 1 or above, velocities never decay and training diverges."""
    if not 0 <= momentum < 1:
        raise ValueError(f"{key} must be in [0, 1), got {momentum}")


def check_weight_decay(weight_decay: float, key: str = "weight_decay") -> None:
    """Weight decay pulls weights towards 0; a negative one pushes them away (torch's
    optimisers refuse it, so every cell would fail after the grid started)."""
    if weight_decay < 0:
        raise ValueError(f"{key} must be >= 0, got {weight_decay}")


@dataclass(frozen=True)
class TrainConfig:
    """Recipe for training a student on a pair set. Separate learning rates for the image and
    text sides (a distilled set may supply learned ones). temperature 0.07 -> logit scale 1/0.07.
    precision ``bf16``: the student's forward under bfloat16 autocast (for GPUs; the loss, the
    parameters and the update stay float32). augment: a differentiable augmentation of every
    batch of images (:mod:`bench.protocol.augment`; None = off).

    lr_milestones / lr_gamma: a step schedule (``torch.optim.lr_scheduler.MultiStepLR`` stepped
    once per epoch, as the LoRS evaluation does): after each milestone epoch every learning rate
    is multiplied by ``lr_gamma``. A milestone is an epoch count (an integer >= 1: ``51`` means
    epochs 52, 53, ... run at ``lr * lr_gamma``) or a fraction of ``epochs`` in (0, 1) (``0.5``
    with 100 epochs is epoch 50). Empty: a constant learning rate."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr_image: float = 0.01
    lr_text: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    temperature: float = 0.07
    precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={"omit_if_default": True})
    augment: AugmentConfig | None = field(default=None, metadata={"omit_if_default": True})
    lr_milestones: tuple[float, ...] = field(default=(), metadata={"omit_if_default": True})
    lr_gamma: float = field(default=0.1, metadata={"omit_if_default": True})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        check_contrastive_batch(self.batch_size)
        check_learning_rates(self.lr_image, self.lr_text)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        check_momentum(self.momentum)
        check_weight_decay(self.weight_decay)
        if not self.lr_gamma > 0:
            raise ValueError(f"lr_gamma must be > 0, got {self.lr_gamma}")
        self.milestone_epochs()  # raises for a bad milestone

    def milestone_epochs(self) -> tuple[int, ...]:
        """The epochs after which the learning rates drop by ``lr_gamma`` (ascending)."""
        epochs = []
        for m in self.lr_milestones:
            if 0 < m < 1:
                epochs.append(max(1, round(m * self.epochs)))
            elif m >= 1 and float(m).is_integer():
                epochs.append(int(m))
            else:
                raise ValueError(f"lr_milestones: {m!r} is neither an epoch (an integer >= 1) nor a fraction in (0, 1)")
        if any(e >= self.epochs for e in epochs):
            raise ValueError(f"lr_milestones {list(self.lr_milestones)}: every milestone must come before the last "
                             f"epoch ({self.epochs}); a later one would never take effect")
        if len(set(epochs)) != len(epochs):
            raise ValueError(f"lr_milestones {list(self.lr_milestones)} name one epoch twice")
        return tuple(sorted(epochs))

    @property
    def logit_scale(self) -> float:
        return 1.0 / self.temperature

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass(frozen=True)
class TrainStats:
    epoch_losses: tuple[float, ...]
    steps: int


EpochHook = Callable[[int, Student], None]
#: (pair indices of the batch, logits image x text of the batch), called after each step.
BatchHook = Callable[[torch.Tensor, torch.Tensor], None]


def make_optimizer(student: Student, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups: dict[str, list[torch.nn.Parameter]] = {"image": [], "text": []}
    for name, param in student.named_parameters():
        if param.requires_grad:
            groups[student.modality_of(name)].append(param)
    param_groups = [
        {"params": groups["image"], "lr": cfg.lr_image},
        {"params": groups["text"], "lr": cfg.lr_text},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(param_groups, weight_decay=cfg.weight_decay)


def train_student(
    student: Student,
    pairs: PairSet,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    on_epoch_end: EpochHook | None = None,
    on_batch_end: BatchHook | None = None,
    progress: bool = False,
    description: str = "training",
) -> TrainStats:
    """Train in place. Shuffling and dropout depend only on ``seed`` (global RNG untouched).
    A set with soft targets trains against their block for each batch (hard targets otherwise).

    ``on_epoch_end(epoch, student)`` runs after every epoch (1-based); expert recording
    hooks in here instead of owning a copy of this loop; ``on_batch_end(indices, logits)``
    lets forgetting statistics watch every presentation.
    """
    if len(pairs) == 0:
        raise ValueError("cannot train on an empty pair set")
    student.to(device).train()
    # A frozen tower maps an image to the same features at every step: compute them once.
    cached = student.frozen_tower and cfg.augment is None
    if cached:
        pairs = replace(pairs, images=tower_features(student, pairs.images, device))
    augment_gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 1]).integers(2**62)))
    targets = pairs.soft_targets
    optimizer = make_optimizer(student, cfg)
    milestones = set(cfg.milestone_epochs())
    shuffle = torch.Generator().manual_seed(seed)
    n_batches = math.ceil(len(pairs) / cfg.batch_size)
    losses: list[float] = []
    steps = 0
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), make_progress(transient=True, disable=not progress) as bar:
        torch.manual_seed(seed)
        task = bar.add_task(description, total=cfg.epochs * n_batches, status="")
        for epoch in range(1, cfg.epochs + 1):
            order = torch.randperm(len(pairs), generator=shuffle)
            total = 0.0
            for start in range(0, len(pairs), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                images, texts = pairs.batch(batch, device)
                if cfg.augment is not None:
                    images = augment_batch(images, cfg.augment, augment_gen)
                with cfg.autocast(device):
                    image_emb, text_emb = student(images, texts, from_features=cached)
                if cfg.precision == "bf16":  # the loss in float32
                    image_emb, text_emb = image_emb.float(), text_emb.float()
                if targets is None:
                    loss = contrastive_loss(image_emb, text_emb, cfg.logit_scale)
                else:
                    loss = contrastive_loss(image_emb, text_emb, cfg.logit_scale, targets.block(batch, device),
                                            targets.loss, clip=targets.clip)
                if on_batch_end is not None:
                    on_batch_end(batch, (image_emb @ text_emb.T).detach())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training diverged: the loss is {loss.item()} at epoch {epoch} "
                                             f"(step {steps + 1}); lower the learning rates")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                steps += 1
                bar.advance(task)
            losses.append(total / n_batches)
            bar.update(task, status=f"epoch {epoch} loss {losses[-1]:.3f}")
            if epoch in milestones:
                for group in optimizer.param_groups:
                    group["lr"] *= cfg.lr_gamma
            if on_epoch_end is not None:
                on_epoch_end(epoch, student)
    student.eval()
    return TrainStats(tuple(losses), steps)
