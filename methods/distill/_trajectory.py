"""Glue shared by the trajectory-matching variants: the variants differ only in which of
images / texts they learn, so each variant module is a two-line subclass of this."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bench.matching import MatchingConfig, TrajectoryMatcher, run_key
from bench.methods_api import Method, MethodContext, MethodOutput, check_budget
from bench.data.pairs import PairSet
from bench.models.student import build_student


class TrajectoryMatching(Method):
    Params = MatchingConfig
    uses_experts = True
    learn_images: ClassVar[bool]
    learn_texts: ClassVar[bool]

    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        check_budget(budget, ctx.n_pairs)
        cfg: MatchingConfig = self.params
        buffer = ctx.experts()
        rng = np.random.default_rng(seed)
        init = np.sort(rng.choice(ctx.n_pairs, size=budget, replace=False))
        real = ctx.real_subset(init)
        # The student module only supplies the architecture: parameters come from the experts.
        student = build_student(ctx.model_cfg, ctx.data.train.resolution, ctx.data.text_dim, seed)
        key = run_key(self.name, ctx.data.dataset.content_key, buffer.key, cfg, budget, seed, init.tolist())
        checkpoint = ctx.cache_dir / "distill" / f"{ctx.data.name}-{self.name}-{key}.pt"
        matcher = TrajectoryMatcher(student, buffer, cfg, self.learn_images, self.learn_texts, ctx.device, checkpoint)
        state = matcher.run(real, seed, key, progress=ctx.progress)
        lrs = {"image": float(state.lrs[0]), "text": float(state.lrs[1])}
        return MethodOutput(
            pairs=PairSet.synthetic(state.images, state.texts),
            learned_lrs=lrs,
            info={"matching_loss": state.losses, "init_indices": init.tolist(), "iterations": state.iteration,
                  "learned_lrs": lrs, "expert_buffer_bytes": buffer.size_bytes()},
        )
