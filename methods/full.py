"""The `full` reference row: the whole training set, evaluated with the full-data recipe."""

from __future__ import annotations

from bench.methods_api import Method, MethodContext, MethodOutput
from bench.registry import register


@register("full", "reference", "every training pair (upper reference, trained with evaluation.full_train)")
class Full(Method):
    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        return MethodOutput(pairs=ctx.data.train_pairs())
