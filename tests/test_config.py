"""Config validation: typos and wrong types are errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.core.config import ConfigError, apply_overrides, from_dict, to_dict
from bench.grid.spec import GridConfig as ExperimentConfig
from bench.grid.spec import load_grid as load_experiment
from bench.protocol.train import TrainConfig

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


# --- per-budget method parameters (MethodSpec.budget_params) --------------------------------

_MATCHING = {"iterations": 10, "syn_steps": 4, "lr_img": 100.0}


def _budget_grid(budget_params, budgets=(100, 1000), params=None):
    return {"name": "x", "budgets": list(budgets), "methods": [
        "random", {"name": "distill-joint", "params": dict(params or _MATCHING), "budget_params": budget_params}]}


def _distill_cells(grid):
    from bench.grid.spec import plan_cells

    return {c.budget: c for c in plan_cells(grid) if c.method == "distill-joint"}


def test_budget_params_apply_to_their_budget_only():
    from bench.grid.spec import resolve_cell, validate_methods

    grid = from_dict(ExperimentConfig, _budget_grid({1000: {"lr_img": 5000, "iterations": 3}}))
    validate_methods(grid)
    cells = _distill_cells(grid)
    small, large = resolve_cell(grid, cells[100]).params, resolve_cell(grid, cells[1000]).params
    assert (small.lr_img, small.iterations, small.syn_steps) == (100.0, 10, 4)
    assert (large.lr_img, large.iterations, large.syn_steps) == (5000.0, 3, 4)  # merged over params
    assert grid.methods[1].params == _MATCHING  # the base params are not modified


def test_budget_override_changes_only_its_own_cell_hash():
    from bench.grid.spec import cell_hash

    a = from_dict(ExperimentConfig, _budget_grid({1000: {"lr_img": 5000}}))
    b = from_dict(ExperimentConfig, _budget_grid({1000: {"lr_img": 6000}}))
    plain = from_dict(ExperimentConfig, _budget_grid({}))
    ca, cb, cp = _distill_cells(a), _distill_cells(b), _distill_cells(plain)
    assert cell_hash(a, ca[100]) == cell_hash(b, cb[100]) == cell_hash(plain, cp[100])
    assert cell_hash(a, ca[1000]) != cell_hash(b, cb[1000])
    assert cell_hash(a, ca[1000]) != cell_hash(plain, cp[1000])
    # An override that restates a base value resolves to the same params: same cell.
    same = from_dict(ExperimentConfig, _budget_grid({1000: {"lr_img": 100.0}}))
    assert cell_hash(same, _distill_cells(same)[1000]) == cell_hash(plain, cp[1000])


def test_a_cell_hash_covers_what_determines_the_cell_and_nothing_else(monkeypatch):
    """Resolved parameters: spelling out a default, or moving a value between params and a
    budget's override, leaves the hash alone (and so a changed default changes it); another
    proxy recipe (for a method that reads the proxy), another expert recipe (for one that reads
    experts) or a bumped method version changes it; unrelated sections do not."""
    from bench.grid.spec import cell_hash, plan_cells
    from bench.registry import get_method

    def hashes(data):
        grid = from_dict(ExperimentConfig, data)
        return {c.id: cell_hash(grid, c) for c in plan_cells(grid)}

    base = {**_budget_grid({}), "methods": ["random", "herding", {"name": "distill-joint", "params": dict(_MATCHING)}]}
    ref = hashes(base)
    assert len(set(ref.values())) == len(ref)
    spelled = {**base, "methods": ["random", "herding", {"name": "distill-joint",
                                                         "params": {**_MATCHING, "momentum": 0.5}}]}
    assert hashes(spelled) == ref  # 0.5 is the default
    moved = {**base, "methods": ["random", "herding", {"name": "distill-joint", "params": {}, "budget_params": {
        b: dict(_MATCHING) for b in (100, 1000)}}]}
    assert hashes(moved) == ref

    def changed(data):
        return {k for k, v in hashes(data).items() if ref[k] != v}

    assert changed({**base, "proxy": {"epochs": 7}}) == {c for c in ref if "herding" in c}
    assert changed({**base, "experts": {"epochs": 9}}) == {c for c in ref if "distill-joint" in c}
    assert changed({**base, "evaluation": {"seeds": [5]}}) == set(ref)
    monkeypatch.setattr(get_method("distill-joint"), "version", 99)
    assert changed(base) == {c for c in ref if "distill-joint" in c}


def test_a_method_runs_at_its_own_budgets_only():
    """``budgets`` of a method entry: its cells are those budgets (in the grid's order), the
    other methods keep every budget, the hashes of the cells it keeps do not change, and its
    overrides may only name budgets it runs at."""
    from bench.grid.spec import cell_hash, plan_cells

    data = _budget_grid({}, budgets=(100, 500, 1000))
    some = {**data, "methods": ["random", {**data["methods"][1], "budgets": [1000, 100]}]}
    grid, every = from_dict(ExperimentConfig, some), from_dict(ExperimentConfig, data)
    planned = [(c.method, c.budget) for c in plan_cells(grid)]
    assert [b for m, b in planned if m == "distill-joint"] == [100, 1000]
    assert [b for m, b in planned if m == "random"] == [100, 500, 1000]
    by_id = {c.id: cell_hash(every, c) for c in plan_cells(every)}
    assert all(by_id[c.id] == cell_hash(grid, c) for c in plan_cells(grid))
    with pytest.raises(ConfigError, match=r"methods\[1\] \(distill-joint\)\.budgets \[200\]: each must be one of "
                                          r"the grid's budgets \[100, 500, 1000\]"):
        from_dict(ExperimentConfig, {**data, "methods": ["random", {**data["methods"][1], "budgets": [200]}]})
    with pytest.raises(ConfigError, match=r"budget_params\.500: budget 500 is not in budgets \[100\]"):
        from_dict(ExperimentConfig, {**data, "methods": ["random", {**data["methods"][1], "budgets": [100],
                                                                    "budget_params": {500: {"lr_img": 1}}}]})


def test_budget_params_errors_name_their_path():
    from bench.grid.spec import validate_methods

    with pytest.raises(ConfigError) as err:
        validate_methods(from_dict(ExperimentConfig, _budget_grid({1000: {"lr_imgg": 5000}})))
    msg = str(err.value)
    assert "methods[1] (distill-joint).budget_params.1000.lr_imgg" in msg and "'lr_img'" in msg
    typed = r"methods\[1\] \(distill-joint\)\.budget_params\.1000\.lr_img: expected a number"
    with pytest.raises(ConfigError, match=typed):
        validate_methods(from_dict(ExperimentConfig, _budget_grid({1000: {"lr_img": "big"}})))
    with pytest.raises(ConfigError, match=r"budget_params\.1000.*syn_steps"):  # the merged set is checked too
        validate_methods(from_dict(ExperimentConfig, _budget_grid({1000: {"syn_steps": 0}})))
    with pytest.raises(ConfigError, match=r"methods\[1\] \(distill-joint\)\.params\.lr_imgg"):  # base typo: base path
        validate_methods(from_dict(ExperimentConfig, _budget_grid(
            {100: {"lr_img": 1}, 1000: {"lr_img": 2}}, params={"lr_imgg": 1})))
    with pytest.raises(ConfigError, match=r"budget_params\.500: budget 500 is not in budgets \[100, 1000\]"):
        from_dict(ExperimentConfig, _budget_grid({500: {"lr_img": 5000}}))
    with pytest.raises(ConfigError, match=r"methods\[1\]\.budget_params: key 'big' is not a valid int"):
        from_dict(ExperimentConfig, _budget_grid({"big": {"lr_img": 5000}}))


def test_budget_params_from_yaml_overrides_and_round_trip(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "name: x\nbudgets: [100, 1000]\nmethods:\n- random\n- name: distill-joint\n"
        "  params: {iterations: 10}\n  budget_params:\n    1000: {lr_img: 5000}\n")
    grid = load_experiment(path)
    assert grid.methods[1].budget_params == {1000: {"lr_img": 5000}}  # YAML int keys stay ints
    # --set reaches into the list by index; "1000" finds the existing int key, "100" adds one.
    grid = load_experiment(path, ["methods.1.budget_params.1000.lr_txt=7", "methods.1.budget_params.100.lr_img=3"])
    assert grid.methods[1].budget_params == {1000: {"lr_img": 5000, "lr_txt": 7}, 100: {"lr_img": 3}}
    assert from_dict(ExperimentConfig, to_dict(grid)) == grid  # to_dict writes "1000": read back as 1000
    with pytest.raises(ConfigError, match="key '1000' is given twice"):
        from_dict(ExperimentConfig, _budget_grid({1000: {}, "1000": {}}))


def test_overrides_index_lists():
    data = {"name": "x", "datasets": [{"source": "embedded", "embedded": {"resolution": 16}}]}
    apply_overrides(data, ["datasets.0.embedded.resolution=24", "datasets.-1.text_encoder.pooling=cls"])
    cfg = from_dict(ExperimentConfig, data)
    assert cfg.datasets[0].resolution == 24 and cfg.datasets[0].text_encoder.pooling == "cls"
    with pytest.raises(ConfigError, match="index 3 is out of range"):
        apply_overrides(data, ["datasets.3.embedded.resolution=24"])
    with pytest.raises(ConfigError, match="must be a list index"):
        apply_overrides(data, ["datasets.first.embedded.resolution=24"])
    with pytest.raises(ConfigError, match="is not a mapping"):
        apply_overrides({"methods": ["random"]}, ["methods.0.params.x=1"])
