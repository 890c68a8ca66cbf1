"""Glue shared by the trajectory-matching variants: the variants differ only in which of
images / texts they learn, so each variant module is a two-line subclass of this."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bench.data.pairs import PairSet, normalize_images
from bench.matching import LearnedTensor, MatchingConfig, MatchingState, TrajectoryMatcher, run_key, step_sizes
from bench.methods_api import Method, MethodContext, MethodOutput, check_budget
from bench.models.student import build_student


def synthetic_start(real: PairSet, cfg: MatchingConfig, learn_images: bool, learn_texts: bool
                    ) -> dict[str, LearnedTensor]:
    """Images (model-input space), text vectors and step sizes, initialised from real pairs."""
    return {
        "images": LearnedTensor(normalize_images(real.images[real.image_index]).float(), cfg.lr_img,
                                cfg.momentum, learn_images),
        "texts": LearnedTensor(real.text_emb.float(), cfg.lr_txt, cfg.momentum, learn_texts),
        "lrs": step_sizes(cfg.syn_lr_init, cfg.lr_lr, cfg.momentum),
    }


class TrajectoryMatching(Method):
    Params = MatchingConfig
    uses_experts = True
    learn_images: ClassVar[bool]
    learn_texts: ClassVar[bool]

    def learned(self, real: PairSet) -> dict[str, LearnedTensor]:
        return synthetic_start(real, self.params, self.learn_images, self.learn_texts)

    def matcher(self, ctx: MethodContext, student, buffer, checkpoint) -> TrajectoryMatcher:  # noqa: ANN001
        return TrajectoryMatcher(student, buffer, self.params, ctx.device, checkpoint=checkpoint)

    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        check_budget(budget, ctx.n_pairs)
        buffer = ctx.experts()
        rng = np.random.default_rng(seed)
        init = np.sort(rng.choice(ctx.n_pairs, size=budget, replace=False))
        real = ctx.real_subset(init)
        # The student module only supplies the architecture: parameters come from the experts.
        student = build_student(ctx.model_cfg, ctx.data.train.resolution, ctx.data.text_dim, seed)
        key = run_key(self.name, ctx.data.key, buffer.key, self.params, budget, seed, init.tolist())
        checkpoint = ctx.cache_dir / "distill" / f"{ctx.data.name}-{self.name}-{key}.pt"
        state = self.matcher(ctx, student, buffer, checkpoint).run(self.learned(real), seed, key, progress=ctx.progress)
        return self.output(state, init, buffer)

    def output(self, state: MatchingState, init: np.ndarray, buffer) -> MethodOutput:  # noqa: ANN001
        lrs = state.tensors["lrs"]
        learned_lrs = {"image": float(lrs[0]), "text": float(lrs[1])}
        return MethodOutput(
            pairs=PairSet.synthetic(state.tensors["images"], state.tensors["texts"]),
            learned_lrs=learned_lrs,
            info={"matching_loss": state.losses, "init_indices": init.tolist(), "iterations": state.iteration,
                  "learned_lrs": learned_lrs, "expert_buffer_bytes": buffer.size_bytes(),
                  "matching_seconds": round(state.seconds, 3), "resumes": state.resumes},
        )
