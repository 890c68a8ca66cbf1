"""Small grids for runner tests: tiny embedded data, tiny students, few epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.config import from_dict
from bench.grid import GridConfig

PLUGIN_SOURCE = '''
"""A method plugin that lives outside the repository."""
import numpy as np
from bench.methods_api import Method, MethodOutput, check_budget
from bench.registry import register


@register("first-k", "coreset", "the first k pairs (a test plugin)")
class FirstK(Method):
    def run(self, ctx, budget, seed):
        check_budget(budget, ctx.n_pairs)
        return MethodOutput(pairs=ctx.real_subset(np.arange(budget)))
'''


def write_plugin(directory: Path) -> Path:
    path = directory / "outside_plugin.py"
    path.write_text(PLUGIN_SOURCE)
    return path


def tiny_grid(tmp_path: Path, **overrides: Any) -> GridConfig:
    data: dict[str, Any] = {
        "name": "tiny",
        "results_dir": str(tmp_path / "results"),
        "cache_dir": str(tmp_path / "cache"),
        "datasets": [{"source": "embedded", "embedded": {
            "n_train_images": 60, "n_val_images": 4, "n_test_images": 30, "resolution": 16}}],
        "model": {"image_encoder": {"width": 8, "depth": 2}},
        "evaluation": {"seeds": [0, 1], "train": {"epochs": 3, "batch_size": 10},
                       "full_train": {"epochs": 1, "batch_size": 64}},
        "proxy": {"epochs": 1, "batch_size": 64},
        "methods": ["random", "herding"],
        "budgets": [10],
        "method_seeds": [0],
        "runner": {"executor": "local", "max_retries": 1},
    }
    data.update(overrides)
    return from_dict(GridConfig, data)
