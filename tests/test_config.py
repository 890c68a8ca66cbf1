"""Config validation: typos and wrong types are errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import ConfigError, apply_overrides, from_dict, to_dict
from bench.grid import GridConfig as ExperimentConfig
from bench.grid import load_grid as load_experiment
from bench.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent


def test_unknown_key_names_path_and_suggestion():
    with pytest.raises(ConfigError) as err:
        from_dict(ExperimentConfig, {"name": "x", "evaluation": {"train": {"epoch": 3}}})
    msg = str(err.value)
    assert "evaluation.train.epoch" in msg and "'epochs'" in msg


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"evaluation\.train\.batch_size.*integer"):
        from_dict(ExperimentConfig, {"name": "x", "evaluation": {"train": {"batch_size": "big"}}})
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.source.*not one of"):
        from_dict(ExperimentConfig, {"name": "x", "datasets": [{"source": "imagenet"}]})
    with pytest.raises(ConfigError, match="missing required config key 'name'"):
        from_dict(ExperimentConfig, {})


def test_value_check_in_dataclass_is_config_error():
    with pytest.raises(ConfigError, match="epochs"):
        from_dict(TrainConfig, {"epochs": 0})


def test_numbers_and_round_trip():
    cfg = from_dict(TrainConfig, {"lr_image": "1e-3", "lr_text": 1})
    assert cfg.lr_image == pytest.approx(1e-3) and isinstance(cfg.lr_text, float)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_overrides_apply_and_validate():
    data = apply_overrides({"name": "x"}, ["evaluation.seeds=[3, 4]", "model.image_encoder.width=32"])
    cfg = from_dict(ExperimentConfig, data)
    assert cfg.evaluation.seeds == (3, 4) and cfg.model.image_encoder.width == 32
    with pytest.raises(ConfigError, match="model.image_encoder.widht"):
        from_dict(ExperimentConfig, apply_overrides({"name": "x"}, ["model.image_encoder.widht=3"]))
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])


def test_config_hash_changes_with_content():
    a = from_dict(ExperimentConfig, {"name": "x"})
    b = from_dict(ExperimentConfig, {"name": "x", "evaluation": {"seeds": [0, 1]}})
    assert a.config_hash == from_dict(ExperimentConfig, {"name": "x"}).config_hash
    assert a.config_hash != b.config_hash


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    load_experiment(path)


def test_missing_and_malformed_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_experiment(bad)
