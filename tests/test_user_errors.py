"""Mistakes a user makes are one ``error: ...`` line on stderr with exit status 2, found before
any compute, and say where the bad value came from; ``--debug`` adds the traceback."""

from __future__ import annotations

import collections
import errno
import json
import os
from pathlib import Path

import pytest

from bench.commands.cli import main
from bench.core import io as bench_io
from bench.core.config import ConfigError
from bench.core.io import UnusableDirectoryError
from bench.grid.runner import GridRun
from bench.grid.spec import load_grid
from tests.grid_helpers import TINY_MODEL, tiny_grid

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
TINY = ["datasets=[{source: embedded, embedded: {n_train_images: 10, n_val_images: 2, n_test_images: 4, resolution: 16}}]",
        f"model={TINY_MODEL}", "evaluation.seeds=[0]",
        "evaluation.train.epochs=1", "evaluation.full_train.epochs=1", "methods=[random]", "budgets=[10]",
        "runner.executor=local"]
CLASH = '''
from bench.methods_api import Method
from bench.registry import register


@register("herding", "coreset", "a second herding")
class MyHerding(Method):
    def run(self, ctx, budget, seed):
        raise NotImplementedError
'''


def _cli(tmp_path: Path, *extra: str, sets: list[str] | None = None) -> list[str]:
    args = ["--no-progress", *extra]
    for s in [f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}", *TINY, *(sets or [])]:
        args += ["--set", s]
    return args


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def _karpathy(tmp_path: Path, **changes) -> str:
    from tests.test_karpathy import make_dataset

    spec = make_dataset(tmp_path / "data")
    fields = {"name": "tiny", "train_json": str(spec.train_json), "val_json": str(spec.val_json),
              "test_json": str(spec.test_json), "image_root": str(spec.image_root), "resolution": 8, **changes}
    return "datasets=[{source: karpathy, karpathy: " + json.dumps(fields) + "}]"


def test_budget_larger_than_the_pool(tmp_path, capsys):
    assert main(_cli(tmp_path, sets=["budgets=[999]"])) == 2
    assert _one_error_line(capsys) == ("error: budgets: budget 999 is larger than the training set of "
                                       "embedded (50 pairs)")
    assert not (tmp_path / "results").exists()  # nothing left behind (the cache keeps the embeddings)


def test_bad_karpathy_file(tmp_path, capsys):
    setting = _karpathy(tmp_path)
    (tmp_path / "data" / "ann" / "ds_train.json").write_text('[{"image": "a.png"}]')
    assert main(_cli(tmp_path, sets=[setting])) == 2
    line = _one_error_line(capsys)
    assert "ds_train.json, entry 0, image 'a.png': missing key 'caption'" in line and "0-based" in line


@pytest.mark.parametrize("source", ["karpathy", "embedded"])
def test_resolution_zero_is_a_config_error(tmp_path, capsys, source):
    setting = _karpathy(tmp_path, resolution=0) if source == "karpathy" else "datasets.0.embedded.resolution=0"
    assert main(_cli(tmp_path, sets=[setting])) == 2
    line = _one_error_line(capsys)
    assert f"datasets[0].{source}" in line and "resolution" in line and "got 0" in line


def test_missing_text_encoder_path(tmp_path, capsys):
    assert main(_cli(tmp_path, sets=[f"datasets.0.text_encoder.path={tmp_path / 'nowhere'}"])) == 2
    line = _one_error_line(capsys)
    assert "text_encoder.path" in line and "nowhere" in line and "no config.json" in line


def test_plugin_syntax_error_names_the_plugin(tmp_path, capsys):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("def broken(:\n    pass\n")
    assert main(_cli(tmp_path, "--plugin", str(plugin))) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: cannot import plugin '{plugin}': SyntaxError") and "line 1" in line
    assert "quickstart.yaml" not in line  # not blamed on the config file


def test_plugin_name_clash_blames_the_plugin(tmp_path, capsys, isolated_registry):
    plugin = tmp_path / "clash_plugin.py"
    plugin.write_text(CLASH)
    assert main(["methods", "--plugin", str(plugin)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: cannot import plugin '{plugin}': method name 'herding' of MyHerding in {plugin}")
    assert "already taken by HerdingCoreset in" in line


@pytest.mark.parametrize("setting, expected", [
    ("budgets=[1,", "error: override 'budgets=[1,': the value is not valid YAML (expected the node content, "
                    "but found '<stream end>' at line 1, column 4)"),
    ("evaluation.sedes=1", "error: --set 'evaluation.sedes=1': unknown config key 'evaluation.sedes'"),
    ("budgets=[10, 10]", "error: --set 'budgets=[10, 10]': budgets lists 10 more than once"),
    ("method_seeds=[0, 0]", "error: --set 'method_seeds=[0, 0]': method_seeds lists 0 more than once"),
    ("method_seeds=[-1]", "error: --set 'method_seeds=[-1]': method_seeds: seed -1 is negative"),
    ("evaluation.seeds=[-2]", "error: --set 'evaluation.seeds=[-2]': evaluation: seeds: seed -2 is negative"),
    ("device=gpu", "error: --set 'device=gpu': device 'gpu' is not one of"),
    ("datasets.0.text_encoder.pooling=max", "error: --set 'datasets.0.text_encoder.pooling=max': "
                                            "datasets[0].text_encoder.pooling: 'max' is not one of"),
])
def test_override_errors_name_the_override(tmp_path, capsys, setting, expected):
    assert main(_cli(tmp_path, sets=[setting])) == 2
    assert _one_error_line(capsys).startswith(expected)


def test_a_device_this_machine_lacks_is_a_config_error(tmp_path):
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ConfigError, match=r"^--set 'device=cuda:7': device 'cuda:7' was asked for but "):
        load_grid(QUICKSTART, ["device=cuda:7"])
    # A grid that joins a running cluster is not judged by the driver's devices.
    load_grid(QUICKSTART, ["device=cuda:7", "runner.ray_address=10.0.0.1:6379"])


def test_directory_as_config_and_errors_in_the_file(tmp_path, capsys):
    assert main(["--config", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == f"error: config {tmp_path} is a directory; give a YAML file (e.g. configs/quickstart.yaml)"
    config = tmp_path / "grid.yaml"
    config.write_text("name: x\nbudgets: [5, 5]\n")
    assert load_grid(config, ["budgets=[5, 6]"]).budgets == (5, 6)  # an override may fix the file
    assert main(["--config", str(config), "--set", "method_seeds=[1]"]) == 2
    assert _one_error_line(capsys).startswith(f"error: {config}: budgets lists 5 more than once")


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: config")


@pytest.mark.parametrize("name, where", [
    ("datasets.0.karpathy.name=../../X", "datasets[0].karpathy: name: '../../X' cannot be used in file names"),
    ("methods=[random, {name: herding, label: a/b}]", "methods[1]: label: 'a/b' cannot be used in file names"),
    ("methods=[random, {name: herding, label: x__y}]", "methods[1]: label: 'x__y' cannot be used in file names"),
    ("methods=[random, {name: herding, label: .hidden}]", "methods[1]: label: '.hidden' cannot be used in file names"),
])
def test_names_that_become_file_names_are_checked(tmp_path, name, where):
    sets = [_karpathy(tmp_path)] if "karpathy" in name else []
    with pytest.raises(ConfigError) as err:
        load_grid(QUICKSTART, sets + [name])
    assert str(err.value).startswith(f"--set {name!r}: {where}")


def test_a_method_name_that_is_no_file_name_is_refused():
    from bench.registry import register

    with pytest.raises(ValueError, match="method name: 'a/b' cannot be used in file names"):
        register("a/b", "coreset", "x")


# ----------------------------------------------------------------------------- results_dir


def _no_compute(monkeypatch):
    import bench.grid.cell

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the results directory was checked")

    monkeypatch.setattr(bench.grid.cell, "prepare_dataset", refuse)


def test_results_dir_that_is_a_file(tmp_path, monkeypatch, capsys):
    _no_compute(monkeypatch)
    (tmp_path / "results").write_text("not a directory")
    assert main(_cli(tmp_path)) == 2
    assert _one_error_line(capsys) == f"error: results_dir {tmp_path / 'results'} is a file, not a directory"


def test_results_dir_on_a_full_disk(tmp_path, monkeypatch):
    _no_compute(monkeypatch)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(bench_io.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 1024, 1024))
    with pytest.raises(UnusableDirectoryError, match=r"results_dir .* has only 0\.0 MiB free"):
        GridRun(tiny_grid(tmp_path), progress=False).run()


def test_results_dir_that_cannot_be_written(tmp_path, monkeypatch):
    _no_compute(monkeypatch)
    target = tmp_path / "readonly"
    target.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: stand in for a read-only mount instead
        target.chmod(0o555)
    else:
        def read_only(path, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

        monkeypatch.setattr(bench_io, "write_text_atomic", read_only)
    try:
        with pytest.raises(UnusableDirectoryError, match=r"results_dir .*readonly.* cannot be written: "):
            GridRun(tiny_grid(tmp_path, results_dir=str(target)), progress=False).run()
    finally:
        target.chmod(0o755)
