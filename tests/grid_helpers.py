"""Small grids for runner tests: tiny embedded data, tiny students, few epochs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.core.config import from_dict
from bench.grid.spec import GridConfig

REPO = Path(__file__).resolve().parent.parent
#: Environment for a run_bench.py subprocess that starts a local Ray cluster; its workers import
#: ``bench`` from this checkout (not from whatever checkout is installed in the environment).
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}

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


#: Experts for the tiny grid: 15 SGD steps per epoch (300 pairs / 20), about as far as a few
#: unrolled steps on a synthetic set go, so matching starts near its no-movement baseline.
TINY_EXPERTS = {"n_experts": 2, "epochs": 3, "batch_size": 20}


def distill_env(root: Path) -> SimpleNamespace:
    """A tiny grid, its prepared data and trained experts (``TINY_EXPERTS``), for matching tests."""
    import torch

    from bench.distill.experts import ExpertConfig, ensure_experts
    from bench.grid.cell import prepared

    grid = tiny_grid(root)
    data = prepared(grid, "embedded")
    cfg, base = ExpertConfig(**TINY_EXPERTS), grid.evaluation.full_train
    buffer = ensure_experts(data, grid.model, cfg, base, grid.cache_dir, torch.device("cpu"))
    return SimpleNamespace(root=root, grid=grid, data=data, cfg=cfg, base=base, buffer=buffer)


def records(results: Path) -> dict[str, dict]:
    """The finished records of a results directory, by cell id."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))
            if not p.name.endswith(".failed.json")}


def metrics(recs: dict[str, dict]) -> dict[str, list]:
    return {k: [s["metrics"] for s in r["per_seed"]] for k, r in recs.items()}


#: The whole model section for CLI runs, so the tiny grids never inherit the quickstart's model
#: (e.g. a pretrained or frozen tower): a small ConvNet from scratch, as ``tiny_grid`` has.
TINY_MODEL = "{image_encoder: {name: convnet, width: 8, depth: 2}, text_head: residual, text_dropout: 0.1, embed_dim: null}"


def cli_args(tmp_path: Path, results: Path, plugin: Path, executor: str, **extra: Any) -> list[str]:
    """``run_bench.py`` on a tiny embedded grid (7 cells with the default methods/budgets);
    ``extra`` adds or replaces ``--set`` overrides."""
    sets: dict[str, Any] = {
        "results_dir": results, "cache_dir": tmp_path / "cache",
        "datasets": "[{source: embedded, embedded: {n_train_images: 60, n_val_images: 4, n_test_images: 30, resolution: 16}}]",
        "model": TINY_MODEL,
        "evaluation.seeds": "[0, 1]", "evaluation.train.epochs": 30, "evaluation.train.batch_size": 10,
        "evaluation.full_train.epochs": 2, "proxy.epochs": 1, "budgets": "[10, 20]",
        "methods": "[random, kcenter, first-k]",
        **extra,
    }
    args = [sys.executable, str(REPO / "run_bench.py"), "--no-progress", "--executor", executor, "--plugin", str(plugin)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args
