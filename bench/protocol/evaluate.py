"""Evaluation protocol: train a fresh student on a pair set per evaluation seed, then
measure final-epoch test recall. Every method's set goes through this one function, with the
same students, recipe and seeds, so differences between methods are paired."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from bench.data.pairs import PairSet
from bench.data.types import Split
from bench.models.student import ModelConfig, Student, build_student
from bench.protocol.embed import embed_split
from bench.protocol.retrieval import retrieval_metrics
from bench.protocol.train import TrainConfig, train_student


def evaluate_student(
    student: Student, split: Split, text_emb: torch.Tensor, device: torch.device
) -> dict[str, float]:
    image_emb, caption_emb = embed_split(student, split, text_emb, device)
    return retrieval_metrics(image_emb, caption_emb, split.caption_image)


@dataclass(frozen=True)
class SeedResult:
    seed: int
    metrics: dict[str, float]
    train_seconds: float
    final_loss: float
    lr_image: float
    lr_text: float


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
    for seed in seeds:
        student = build_student(model_cfg, eval_split.resolution, pairs.text_emb.shape[1], seed)
        start = time.perf_counter()
        stats = train_student(
            student, pairs, train_cfg, seed, device, progress=progress, description=f"{description} seed {seed}"
        )
        seconds = time.perf_counter() - start
        metrics = evaluate_student(student, eval_split, eval_text_emb, device)
        results.append(SeedResult(seed, metrics, seconds, stats.epoch_losses[-1], train_cfg.lr_image, train_cfg.lr_text))
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
