# my_methods.py: a method plugin (README "Adding a method"; tests/test_snippets.py runs it)
import numpy as np

from bench.methods_api import Method, MethodOutput, check_budget
from bench.registry import register


@register("longest-captions", "coreset", "the pairs with the longest captions")
class LongestCaptions(Method):
    def run(self, ctx, budget, seed):
        check_budget(budget, ctx.n_pairs)
        lengths = np.array([len(c) for c in ctx.data.train.captions])
        return MethodOutput(pairs=ctx.real_subset(np.argsort(-lengths, kind="stable")[:budget]))
