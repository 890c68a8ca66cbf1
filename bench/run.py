"""Run an experiment config: prepare the data, evaluate the reference sets, store records."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import to_dict
from bench.data.datasets import PreparedDataset, prepare_dataset
from bench.data.pairs import PairSet
from bench.env import git_commit, machine_info, pick_device
from bench.evaluate import evaluate_pair_set, summarize
from bench.experiment import ExperimentConfig
from bench.io import write_json_atomic
from bench.train import TrainConfig


def random_subset(n_pairs: int, budget: int, seed: int) -> torch.Tensor:
    """Uniformly chosen pair indices (sorted), reproducible from ``seed``."""
    if budget > n_pairs:
        raise ValueError(f"budget {budget} is larger than the training set ({n_pairs} pairs)")
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(n_pairs, size=budget, replace=False))).long()


def _record(
    cfg: ExperimentConfig,
    data: PreparedDataset,
    method: str,
    budget: int | None,
    method_seed: int | None,
    pairs: PairSet,
    train_cfg: TrainConfig,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    split = data.dataset.split(cfg.evaluation.split)
    start = time.perf_counter()
    results = evaluate_pair_set(
        pairs, cfg.model, train_cfg, split, data.text_emb[cfg.evaluation.split], cfg.evaluation.seeds,
        device, progress=progress, description=f"{method}" + (f"@{budget}" if budget else ""),
    )
    return {
        "dataset": data.name,
        "method": method,
        "budget": budget,
        "n_pairs": len(pairs),
        "method_seed": method_seed,
        "eval_seeds": list(cfg.evaluation.seeds),
        "eval_split": cfg.evaluation.split,
        "per_seed": [asdict(r) for r in results],
        "summary": summarize(results),
        "eval_seconds": time.perf_counter() - start,
        "source_indices": None if pairs.source_indices is None else pairs.source_indices.tolist(),
        "train_recipe": to_dict(train_cfg),
        "config": to_dict(cfg),
        "config_hash": cfg.config_hash,
        "dataset_key": data.dataset.content_key,
        "machine": machine_info(),
        "device": str(device),
        "git_commit": git_commit(),
    }


def run_experiment(cfg: ExperimentConfig, progress: bool = True) -> list[dict[str, Any]]:
    device = pick_device(cfg.device)
    data = prepare_dataset(cfg.dataset, cfg.cache_dir, device, progress)
    n_pairs = data.train.n_captions
    for budget in cfg.budgets:
        if budget > n_pairs:
            raise ValueError(f"budget {budget} is larger than the training set of {data.name} ({n_pairs} pairs)")
    out_dir = Path(cfg.results_dir) / "records"
    records = [_record(cfg, data, "full", None, None, data.train_pairs(), cfg.evaluation.full_train, device, progress)]
    write_json_atomic(out_dir / f"{data.name}__full.json", records[-1])
    for budget in cfg.budgets:
        for seed in cfg.method_seeds:
            pairs = data.train_pairs(random_subset(n_pairs, budget, seed))
            records.append(_record(cfg, data, "random", budget, seed, pairs, cfg.evaluation.train, device, progress))
            write_json_atomic(out_dir / f"{data.name}__random__b{budget}__s{seed}.json", records[-1])
    return records
