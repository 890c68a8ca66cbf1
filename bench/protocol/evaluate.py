"""Evaluation protocol: train a fresh student on a pair set per evaluation seed, then
measure final-epoch recall. Every method's set goes through this one function, with the
same students, recipe and seeds, so differences between methods are paired.

With a curve plan the same runs also measure recall on the val and test splits at chosen
epochs (``SeedResult.curve``), so one run yields the final-epoch number and what each epoch
selection rule (:mod:`bench.protocol.selection`) would have reported. Measuring never changes
the training: the student is put back in training mode and no random number is drawn."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from bench.data.pairs import PairSet
from bench.data.types import Split
from bench.models.student import ModelConfig, Student, build_student
from bench.protocol.embed import embed_split, split_features
from bench.protocol.retrieval import retrieval_metrics
from bench.protocol.train import TrainConfig, train_student


def evaluate_student(
    student: Student, split: Split, text_emb: torch.Tensor, device: torch.device,
    image_features: torch.Tensor | None = None,
) -> dict[str, float]:
    image_emb, caption_emb = embed_split(student, split, text_emb, device, image_features=image_features)
    return retrieval_metrics(image_emb, caption_emb, split.caption_image)


def curve_epochs(every: int, epochs: int, start: int = 0) -> tuple[int, ...]:
    """``start, start + every, ...`` up to ``epochs``, and ``epochs`` itself (0 = before training)."""
    if every < 1 or start < 0:
        raise ValueError(f"eval_every must be >= 1 and eval_start >= 0, got {every} and {start}")
    return tuple(sorted(set(range(start, epochs + 1, every)) | {epochs}))


@dataclass(frozen=True)
class CurvePlan:
    """Where an evaluation run is also measured: after these epochs (0 = before the first),
    on these splits (name -> (split, its caption embeddings))."""

    epochs: tuple[int, ...]
    splits: Mapping[str, tuple[Split, torch.Tensor]]


class _TowerFeatures:
    """A frozen tower's features of each split, computed once per evaluated set instead of once
    per seed and curve point: every seed's student loads the same pretrained tower, so its
    features are the same (the towers' tensors are compared, not assumed equal). The features
    are computed in :func:`bench.protocol.embed.embed_split`'s batches, so using them gives the
    numbers of a pass through the tower bit for bit."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._towers: list[tuple[list[torch.Tensor], dict[int, torch.Tensor]]] = []

    def of(self, student: Student, split: Split) -> torch.Tensor | None:
        if not student.frozen_tower:
            return None
        tensors = [t.detach() for t in student.image_encoder.state_dict().values()]
        for known, features in self._towers:
            if len(known) == len(tensors) and all(torch.equal(a, b) for a, b in zip(known, tensors)):
                break
        else:
            features = {}
            self._towers.append((tensors, features))
        if id(split) not in features:  # the splits outlive this object (they belong to the prepared dataset)
            features[id(split)] = split_features(student, split, self.device)
        return features[id(split)]


class _CurveProbe:
    """Measures one student on the plan's splits after the plan's epochs."""

    def __init__(self, plan: CurvePlan, student: Student, device: torch.device, towers: _TowerFeatures) -> None:
        self.plan, self.student, self.device, self.towers = plan, student, device, towers
        self.points: list[dict[str, Any]] = []

    def measure(self, epoch: int) -> None:
        if epoch not in self.plan.epochs:
            return
        training = self.student.training
        for name, (split, text_emb) in self.plan.splits.items():
            metrics = evaluate_student(self.student, split, text_emb, self.device, self.towers.of(self.student, split))
            self.points.append({"epoch": epoch, "split": name, **metrics})
        self.student.train(training)

    def final(self, split: Split, epoch: int) -> dict[str, float] | None:
        """The metrics already measured on ``split`` after ``epoch`` (None: not measured)."""
        for name, (measured, _) in self.plan.splits.items():
            if measured is split:
                for point in self.points:
                    if point["epoch"] == epoch and point["split"] == name:
                        return {k: v for k, v in point.items() if k not in ("epoch", "split")}
        return None


@dataclass(frozen=True)
class SeedResult:
    seed: int
    metrics: dict[str, float]
    train_seconds: float
    final_loss: float
    lr_image: float
    lr_text: float
    curve: list[dict[str, Any]] | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        """What a record's ``per_seed`` entry holds (``curve`` only when measured)."""
        out = dict(self.__dict__)
        if out["curve"] is None:
            del out["curve"]
        return out


def evaluate_pair_set(
    pairs: PairSet,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    eval_split: Split,
    eval_text_emb: torch.Tensor,
    seeds: tuple[int, ...],
    device: torch.device,
    learned_lrs: dict[str, float] | None = None,
    progress: bool = False,
    description: str = "evaluating",
    curve: CurvePlan | None = None,
) -> list[SeedResult]:
    """One result per evaluation seed; ``learned_lrs`` ({'image': .., 'text': ..}) replaces the
    recipe's learning rates when a distillation method supplies them."""
    if learned_lrs:
        train_cfg = replace(
            train_cfg,
            lr_image=float(learned_lrs.get("image", train_cfg.lr_image)),
            lr_text=float(learned_lrs.get("text", train_cfg.lr_text)),
        )
    results = []
    towers = _TowerFeatures(device)
    for seed in seeds:
        student = build_student(model_cfg, eval_split.resolution, pairs.text_emb.shape[1], seed)
        probe = None if curve is None else _CurveProbe(curve, student, device, towers)
        if probe is not None:
            probe.measure(0)
        start = time.perf_counter()
        stats = train_student(
            student, pairs, train_cfg, seed, device, progress=progress, description=f"{description} seed {seed}",
            on_epoch_end=None if probe is None else (lambda epoch, _student, p=probe: p.measure(epoch)),
        )
        seconds = time.perf_counter() - start
        metrics = None if probe is None else probe.final(eval_split, train_cfg.epochs)
        if metrics is None:
            metrics = evaluate_student(student, eval_split, eval_text_emb, device, towers.of(student, eval_split))
        results.append(SeedResult(seed, metrics, seconds, stats.epoch_losses[-1], train_cfg.lr_image,
                                  train_cfg.lr_text, None if probe is None else probe.points))
    return results


def summarize(results: list[SeedResult]) -> dict[str, dict[str, float]]:
    """Mean and sample std (ddof=1; 0 for a single seed) of every metric over seeds."""
    keys = results[0].metrics.keys()
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = torch.tensor([r.metrics[key] for r in results], dtype=torch.float64)
        std = float(values.std(unbiased=True)) if len(values) > 1 else 0.0
        out[key] = {"mean": float(values.mean()), "std": std}
    return out
