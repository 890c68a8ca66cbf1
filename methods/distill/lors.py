"""lors: trajectory matching that also learns the similarity targets of the synthetic pairs.

LoRS ("Low-Rank Similarity Mining for Multimodal Dataset Distillation", Xu et al., ICML 2024):
besides images and text vectors, learn the matrix of target similarities between the set's
images and texts, which the contrastive loss trains against (the identity is the usual
"pair i goes with caption i"). With n pairs the matrix is parameterised as

    S = diag(d) + (alpha / rank) * L @ R^T,      d in R^n, L, R in R^(n x rank),

with d = 1, L ~ N(0, 1) and R = 0 at the start (so S starts at the identity and its low-rank
part starts learning through R). A batch uses the block of S on its pairs, in the inner loop
and in the evaluation, with a weighted binary cross-entropy (``wbce``, the paper's default) or
InfoNCE against soft targets (``infonce``); see ``bench.models.losses``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from bench.data.datasets import PreparedDataset
from bench.data.pairs import PairSet, SoftTargets
from bench.distill.matching import LearnedTensor, MatchingConfig, MatchingState
from bench.distill.unroll import InnerLoss
from bench.methods_api import MethodOutput
from bench.models.losses import contrastive_loss
from bench.registry import register
from bench.trajectory_api import TrajectoryMatching


@dataclass(frozen=True)
class LorsConfig(MatchingConfig):
    """Trajectory matching plus the similarity parameters: ``rank`` and ``alpha`` of the
    low-rank part, their SGD learning rate ``lr_sim`` (momentum: ``momentum``), the ``loss``
    that trains against the targets, ``learn_similarity`` (False: S stays the identity) and
    ``learn_diagonal`` (False: the diagonal stays 1 and only the low-rank part is learned; the
    paper learns both)."""

    rank: int = 10
    alpha: float = 1.0
    lr_sim: float = 10.0
    loss: Literal["wbce", "infonce"] = "wbce"
    learn_similarity: bool = True
    learn_diagonal: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1 or self.lr_sim < 0:
            raise ValueError("rank must be >= 1 and lr_sim >= 0")


def similarity(diag: torch.Tensor, left: torch.Tensor, right: torch.Tensor, alpha: float, rank: int) -> torch.Tensor:
    """The target similarity matrix of the pairs whose parameters are given (rows: images)."""
    return torch.diag(diag) + (alpha / rank) * left @ right.T


def similarity_loss(cfg: LorsConfig) -> InnerLoss:
    """The inner loss: the contrastive loss against the batch's block of S."""

    def loss(image_emb: torch.Tensor, text_emb: torch.Tensor, batch: torch.Tensor, tensors) -> torch.Tensor:  # noqa: ANN001
        targets = similarity(tensors["sim_diag"][batch], tensors["sim_left"][batch], tensors["sim_right"][batch],
                             cfg.alpha, cfg.rank)
        return contrastive_loss(image_emb, text_emb, cfg.inner_logit_scale, targets, cfg.loss)

    return loss


@register("lors", "distillation", "LoRS: trajectory matching that also learns low-rank similarity targets")
class Lors(TrajectoryMatching):
    Params = LorsConfig
    version = 3  # 3: soft targets clipped (negative weights count as 0; wbce targets in [0, 1])
    learn_images = True
    learn_texts = True
    # Trajectory matching's space plus the soft targets' weight (alpha moved 0.01-1 between
    # budgets on the embedded set, docs/recipes.md) and their learning rate.
    default_search = {**TrajectoryMatching.default_search, "alpha": [0.01, 0.1, 1.0], "lr_sim": {"times": [0.3, 1, 3]}}

    @classmethod
    def budget_problem(cls, params: LorsConfig, budget: int, data: PreparedDataset) -> str | None:
        """A rank above the budget is refused, not clamped: the learned similarity is budget x
        budget, so its low-rank part cannot use more, and ``alpha / rank`` would silently scale
        it down."""
        if params.rank > budget:
            return (f"rank {params.rank} is more than the budget {budget} (the learned similarity is {budget} x "
                    f"{budget}); lower rank, for this budget through budget_params")
        return None

    def learned(self, real: PairSet, text_scale: float = 1.0, seed: int = 0) -> dict[str, LearnedTensor]:
        cfg: LorsConfig = self.params
        n = len(real)
        gen = torch.Generator().manual_seed(seed)
        learn, lr = cfg.learn_similarity, cfg.lr_sim
        return {
            **super().learned(real, text_scale, seed),
            "sim_diag": LearnedTensor(torch.ones(n), lr, cfg.momentum, learn and cfg.learn_diagonal),
            "sim_left": LearnedTensor(torch.randn(n, cfg.rank, generator=gen), lr, cfg.momentum, learn),
            "sim_right": LearnedTensor(torch.zeros(n, cfg.rank), lr, cfg.momentum, learn),
        }

    def inner_loss(self) -> InnerLoss:
        return similarity_loss(self.params)

    def output(self, state: MatchingState, init: np.ndarray, buffer, real_texts: torch.Tensor  # noqa: ANN001
               ) -> MethodOutput:
        cfg: LorsConfig = self.params
        out = super().output(state, init, buffer, real_texts)
        t = state.tensors
        matrix = similarity(t["sim_diag"], t["sim_left"], t["sim_right"], cfg.alpha, cfg.rank).detach()
        off = matrix[~torch.eye(len(matrix), dtype=torch.bool)]
        stats = {"loss": cfg.loss, "diag_mean": float(matrix.diagonal().mean()), "offdiag_mean": float(off.mean()),
                 "offdiag_abs_max": float(off.abs().max()) if off.numel() else 0.0}
        pairs = replace(out.pairs, soft_targets=SoftTargets(matrix, cfg.loss))
        return replace(out, pairs=pairs, info={**out.info, "soft_targets": stats})
