"""The top-level run config: one YAML file -> one frozen ExperimentConfig."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench.config import apply_overrides, from_dict, load_yaml, stable_hash_config
from bench.data.datasets import DatasetConfig
from bench.models.student import ModelConfig
from bench.train import TrainConfig


@dataclass(frozen=True)
class EvaluationConfig:
    """How a pair set is scored: a fresh student per seed, trained with ``train`` (budget-sized
    sets) or ``full_train`` (the whole training set), final-epoch recall on ``split``.
    Never tune anything on 'test'."""

    seeds: tuple[int, ...] = (0, 1, 2)
    split: Literal["test", "val"] = "test"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, batch_size=100))
    full_train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("evaluation.seeds must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"evaluation.seeds has duplicates: {list(self.seeds)}")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    budgets: tuple[int, ...] = (100,)
    method_seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    results_dir: str = "results/quickstart"
    cache_dir: str = "results/.cache"

    def __post_init__(self) -> None:
        if any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive, got {list(self.budgets)}")

    @property
    def config_hash(self) -> str:
        return stable_hash_config(self)


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(ExperimentConfig, data)
