"""Method registry: registration, collisions, unknown names, plugins from outside the repo."""

from __future__ import annotations

import pytest

from bench import registry
from bench.commands.cli import main
from bench.core.config import ConfigError
from bench.grid.spec import MethodSpec, validate_methods
from bench.methods_api import Method, MethodOutput
from tests.grid_helpers import tiny_grid, write_plugin


def test_builtins_are_registered_with_kinds():
    methods = registry.all_methods()
    for name in ("random", "herding", "kcenter", "forgetting"):
        assert methods[name].kind == "coreset" and methods[name].description
    assert methods["full"].kind == "reference"


def test_register_a_method_in_a_few_lines(isolated_registry):
    @registry.register("test-noop", "coreset", "returns the first pairs")
    class Noop(Method):
        def run(self, ctx, budget, seed):
            return MethodOutput(pairs=ctx.real_subset(list(range(budget))))

    assert registry.get_method("test-noop") is Noop and Noop.name == "test-noop"


def test_name_collision_is_an_error():
    with pytest.raises(ValueError, match=r"'herding' of .*Impostor in .*test_registry\.py is already taken by "
                                         r"HerdingCoreset in .*methods/coresets/herding\.py"):
        @registry.register("herding", "coreset", "an impostor")
        class Impostor(Method):
            def run(self, ctx, budget, seed):
                raise NotImplementedError


def test_register_checks_base_class_and_kind():
    with pytest.raises(TypeError, match="subclass of bench.methods_api.Method"):
        registry.register("not-a-method", "coreset", "x")(object)
    with pytest.raises(ValueError, match="kind"):
        registry.register("x", "magic", "x")  # type: ignore[arg-type]


def test_unknown_method_lists_close_matches():
    with pytest.raises(registry.UnknownMethodError, match=r"unknown method 'hearding'; did you mean 'herding'"):
        registry.get_method("hearding")


def test_unknown_method_in_config_is_a_config_error(tmp_path):
    grid = tiny_grid(tmp_path, methods=["random", "kcentre"])
    with pytest.raises(ConfigError, match=r"methods\[1\].*'kcentre'.*did you mean 'kcenter'"):
        validate_methods(grid)


def test_method_params_are_validated(tmp_path):
    grid = tiny_grid(tmp_path, methods=[{"name": "herding", "params": {"bogus": 1}}])
    with pytest.raises(ConfigError, match=r"methods\[0\] \(herding\)\.params\.bogus"):
        validate_methods(grid)
    assert MethodSpec.coerce_config("random") == {"name": "random"}


def test_plugin_file_outside_repo_is_listed(tmp_path, capsys, isolated_registry):
    plugin = write_plugin(tmp_path)
    assert main(["methods", "--plugin", str(plugin)]) == 0
    out = capsys.readouterr().out
    assert "first-k" in out and "herding" in out and "a test plugin" in out


def test_entry_point_plugins_are_loaded(monkeypatch, tmp_path, isolated_registry):
    plugin = write_plugin(tmp_path)

    class FakeEntryPoint:
        name, value = "outside", "outside_plugin"

        def load(self):
            registry.load_plugins([str(plugin)])

    monkeypatch.setattr(registry, "_discovered", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [FakeEntryPoint()] if group == registry.ENTRY_POINT_GROUP else [])
    assert registry.get_method("first-k").kind == "coreset"


def test_missing_plugin_is_a_clear_error(tmp_path, capsys):
    assert main(["--plugin", str(tmp_path / "nope.py"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot import plugin") and "nope.py" in err
