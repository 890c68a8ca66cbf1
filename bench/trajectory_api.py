"""The trajectory-matching base class a method plugin subclasses (part of the plugin face).

:class:`TrajectoryMatching` is a whole method: it draws ``budget`` real pairs from the seed,
copies them into an editable synthetic set (:func:`bench.methods_api.editable_set`), matches
expert trajectories with :class:`bench.distill.matching.TrajectoryMatcher` and returns the
set with its learned step sizes. A variant sets ``learn_images`` / ``learn_texts`` and
overrides what differs: ``learned`` (extra learned tensors), ``inner_loss`` (the loss of the
unrolled steps), ``head_inputs`` (what the heads get in each step) and ``output``. The
built-in ``distill-image``, ``distill-text`` and ``distill-joint`` are two-line subclasses,
``lors`` and ``repblend`` larger ones (``methods/distill/``)::

    from bench.registry import register
    from bench.trajectory_api import TrajectoryMatching

    @register("my-matching", "distillation", "trajectory matching, images only")
    class MyMatching(TrajectoryMatching):
        learn_images, learn_texts = True, False
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from bench.data.pairs import PairSet
from bench.data.text_encoder import nearest_captions
from bench.distill.matching import (
    LearnedTensor,
    MatchingConfig,
    MatchingState,
    TrajectoryMatcher,
    run_key,
    step_sizes,
)
from bench.distill.unroll import HeadInputs, InnerLoss
from bench.methods_api import Method, MethodContext, MethodOutput, check_budget, editable_set
from bench.protocol.augment import Augmentation


def synthetic_start(real: PairSet, cfg: MatchingConfig, learn_images: bool, learn_texts: bool,
                    text_scale: float = 1.0) -> dict[str, LearnedTensor]:
    """Images (model-input space), text vectors and step sizes, initialised from real pairs.
    ``text_scale``: the mean squared norm of the encoder's caption vectors (for
    ``text_lr_relative``)."""
    start = editable_set(real)
    texts = start.texts.detach()
    lr_txt = cfg.lr_txt * (text_scale if cfg.text_lr_relative else 1.0)
    return {
        "images": LearnedTensor(start.images.detach(), cfg.lr_img, cfg.momentum, learn_images,
                                max_update=cfg.max_update),
        "texts": LearnedTensor(texts, lr_txt, cfg.momentum, learn_texts,
                               keep_norms(texts.norm(dim=1, keepdim=True)) if cfg.text_sphere else None,
                               cfg.max_update),
        "lrs": step_sizes(cfg.syn_lr_init, cfg.lr_lr, cfg.momentum, cfg.max_update),
    }


def keep_norms(norms: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A projection that rescales each row to its norm in ``norms`` (n, 1)."""

    def project(t: torch.Tensor) -> None:
        t.mul_(norms.to(t.device, t.dtype) / t.norm(dim=1, keepdim=True).clamp_min(1e-12))

    return project


def text_drift(texts: torch.Tensor, real_texts: torch.Tensor, init: np.ndarray) -> dict[str, float]:
    """How far distilled text vectors went from the captions they started from: the fraction
    whose nearest real caption (cosine) is still their own, their mean cosine to it, and their
    mean norm (the real captions' mean norm beside it)."""
    start = torch.as_tensor(init, dtype=torch.int64)
    nearest = nearest_captions(texts, real_texts)
    cosine = F.cosine_similarity(texts.float(), real_texts[start].float(), dim=1)
    return {"nearest_is_start": float((nearest == start).float().mean()),
            "cosine_to_start": float(cosine.mean()),
            "norm_mean": float(texts.float().norm(dim=1).mean()),
            "real_norm_mean": float(real_texts.float().norm(dim=1).mean())}


class TrajectoryMatching(Method):
    """Trajectory matching of a synthetic set started from ``budget`` random real pairs; the
    subclass says what is learned (``learn_images``, ``learn_texts``) and may override the
    hooks (module docstring). Parameters: :class:`bench.distill.matching.MatchingConfig`."""

    Params = MatchingConfig
    uses_experts = True
    version = 2  # 2: flat-parameter matcher, per-step seeds for dropout (other draws than version 1)
    snapshot_param = "iterations"

    @classmethod
    def set_params(cls, params: MatchingConfig) -> MatchingConfig:
        """How often a run checkpoints and which snapshots it keeps change nothing of its
        result (a resumed run repeats the uninterrupted one; a snapshot is the shorter run
        finished)."""
        return replace(params, snapshots=(), checkpoint_every=0)
    # Around the entry's recipe: learning rates a factor of ~3 either way (docs/recipes.md: the
    # embedded searches moved lr_img and lr_txt by 3-10x between budgets), and when to stop
    # (half to twice the iterations: free, read from one run's snapshots). Larger sets may
    # want later expert segments (DATM, ICLR 2024), so 500 and 1000 pairs search the start
    # epochs too; values the entry's experts cannot serve are left out per trial.
    default_search: ClassVar[dict] = {"iterations": {"times": [0.5, 1, 2]}, "lr_img": {"times": [0.3, 1, 3]},
                                      "lr_txt": {"times": [0.3, 1, 3]}}
    default_budget_search: ClassVar[dict] = {
        b: {"min_start_epoch": [0, 1, 2], "max_start_epoch": {"times": [1, 1.5, 2]}} for b in (500, 1000)}
    learn_images: ClassVar[bool]
    learn_texts: ClassVar[bool]

    @classmethod
    def expert_epochs_needed(cls, params: MatchingConfig) -> int:
        """A start epoch below ``max_start_epoch`` (or ``text_max_start_epoch`` when higher) plus
        ``expert_epochs`` (the matcher's rule)."""
        return params.last_epoch + 1

    @classmethod
    def expert_epochs_reason(cls, params: MatchingConfig) -> str:
        return params.last_epoch_reason

    def learned(self, real: PairSet, text_scale: float = 1.0, seed: int = 0) -> dict[str, LearnedTensor]:
        """What the matcher learns (a subclass adds its own tensors here)."""
        return synthetic_start(real, self.params, self.learn_images, self.learn_texts, text_scale)

    def inner_loss(self) -> InnerLoss | None:
        """The loss of the unrolled steps (None: the matcher's contrastive loss)."""
        return None

    def head_inputs(self) -> HeadInputs | None:
        """What the heads get in each unrolled step from its tower features and text vectors
        (None: those themselves)."""
        return None

    def matcher(self, ctx: MethodContext, student, buffer, checkpoint) -> TrajectoryMatcher:  # noqa: ANN001
        augment = None if self.params.augment is None else Augmentation(self.params.augment)
        return TrajectoryMatcher(student, buffer, self.params, ctx.device, inner_loss=self.inner_loss(),
                                 augment=augment, checkpoint=checkpoint, head_inputs=self.head_inputs())

    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        check_budget(budget, ctx.n_pairs)
        buffer = ctx.experts()
        rng = np.random.default_rng(seed)
        init = np.sort(rng.choice(ctx.n_pairs, size=budget, replace=False))
        real = ctx.real_subset(init)
        # The student module only supplies the architecture: parameters come from the experts.
        student = ctx.student(seed)
        def place(iterations: int) -> tuple[str, Path]:
            """The key and checkpoint file of this run stopped at ``iterations``: what a run of
            that many iterations finishes with (how often it checkpoints, and which snapshots
            it keeps, change nothing of the result). The buffer's recipe key does not say how
            many experts it holds: the checkpoint must."""
            params = replace(self.set_params(self.params), iterations=iterations)
            key = run_key(self.name, self.version, ctx.data.key, buffer.key, len(buffer), buffer.epochs, params,
                          budget, seed, init.tolist())
            return key, ctx.cache_dir / "distill" / f"{ctx.data.name}-{self.name}-{key}.pt"

        key, checkpoint = place(self.params.iterations)
        text_scale = float(ctx.data.text_emb["train"].float().square().sum(dim=1).mean())
        learned = self.learned(real, text_scale, seed)
        matcher = self.matcher(ctx, student, buffer, checkpoint)
        matcher.keep_at = {k: place(k) for k in self.params.snapshots}
        state = matcher.run(learned, seed, key, progress=ctx.progress)
        return self.output(state, init, buffer, ctx.data.text_emb["train"])

    def output(self, state: MatchingState, init: np.ndarray, buffer, real_texts: torch.Tensor  # noqa: ANN001
               ) -> MethodOutput:
        lrs = state.tensors["lrs"]
        learned_lrs = {"image": float(lrs[0]), "text": float(lrs[1])}
        return MethodOutput(
            pairs=PairSet.synthetic(state.tensors["images"], state.tensors["texts"]),
            learned_lrs=learned_lrs,
            info={"matching_loss": state.losses, "init_indices": init.tolist(), "iterations": state.iteration,
                  "learned_lrs": learned_lrs, "expert_buffer_bytes": buffer.size_bytes(),
                  "matching_seconds": round(state.seconds, 3), "resumes": state.resumes,
                  "matching_seconds_earlier": round(state.earlier_seconds, 3),
                  "text_drift": text_drift(state.tensors["texts"], real_texts, init)},
        )
