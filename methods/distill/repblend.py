"""repblend: LoRS-style trajectory matching with representation blending in every inner step.

RepBlend ("Beyond Modality Collapse: Representations Blending for Multimodal Dataset
Distillation", Zhang et al., NeurIPS 2025, arXiv 2505.14705; code zhangxin-xd/RepBlend,
``distill_repblend.py``). In every unrolled step, one mixing weight lambda ~ Beta(a, a) and one
permutation ``perm`` of the step's batch are drawn, and the heads get

    features' = lambda * features + (1 - lambda) * features[perm]
    texts'    = lambda * texts    + (1 - lambda) * texts[perm]

(the image tower's features of the synthetic images and the synthetic text vectors, with the
same lambda and permutation), while the contrastive targets of the batch (LoRS's learned
similarity block, or the identity) are not mixed. ``blend_alpha`` is a (1 in the authors'
scripts: ``--alpha_2`` default 1); 0 turns blending off (lambda = 1). The draws come from the
step's seed, so the constant-memory mode replays them. Everything else is :mod:`lors`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.distill.unroll import HeadInputs
from bench.registry import register
from bench.trajectory_api import TrajectoryMatching
from methods.distill.lors import Lors, LorsConfig


@dataclass(frozen=True)
class RepBlendConfig(LorsConfig):
    """LoRS's parameters (``loss``: ``wbce`` as the authors, or ``infonce``; the learned
    low-rank similarity, or ``learn_similarity: false`` for the identity) plus ``blend_alpha``,
    the a of Beta(a, a) the mixing weight is drawn from (0: no blending)."""

    blend_alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.blend_alpha >= 0 and np.isfinite(self.blend_alpha)):
            raise ValueError(f"blend_alpha must be a finite number >= 0 (0 turns blending off), got {self.blend_alpha}")


def blend_draw(seed: int, n: int, alpha: float) -> tuple[float, torch.Tensor]:
    """One step's mixing weight lambda ~ Beta(alpha, alpha) (1 when ``alpha`` is 0) and
    permutation of its ``n`` pairs, both from a generator of ``seed`` alone."""
    rng = np.random.default_rng(seed)
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    return lam, torch.from_numpy(rng.permutation(n))


def blend(features: torch.Tensor, texts: torch.Tensor, lam: float, perm: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's features and text vector mixed with those of pair ``perm[i]`` of the batch."""
    perm = perm.to(features.device)
    return lam * features + (1 - lam) * features[perm], lam * texts + (1 - lam) * texts[perm]


def representation_blending(alpha: float) -> HeadInputs:
    """The matcher hook: blend each step's batch with that step's draw."""

    def head_inputs(features: torch.Tensor, texts: torch.Tensor, batch: torch.Tensor,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        lam, perm = blend_draw(seed, features.shape[0], alpha)
        return blend(features, texts, lam, perm)

    return head_inputs


@register("repblend", "distillation",
          "RepBlend: LoRS-style matching with image-feature/text-vector mixup in every inner step")
class RepBlend(Lors):
    Params = RepBlendConfig
    version = 1
    # Trajectory matching's space plus the mixup's Beta parameter (1 and 2 were chosen on the
    # embedded set's val at different budgets, docs/recipes.md).
    default_search = {**TrajectoryMatching.default_search, "blend_alpha": [0.5, 1.0, 2.0]}

    def head_inputs(self) -> HeadInputs | None:
        alpha = self.params.blend_alpha
        return representation_blending(alpha) if alpha > 0 else None
