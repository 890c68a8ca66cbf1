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


# ----------------------------------------------------------------------------- issue 20: errors found at load


def test_a_key_given_twice_in_the_yaml_is_an_error(tmp_path, monkeypatch, capsys):
    """Item 8: the second ``budgets:`` used to win silently."""
    _no_compute(monkeypatch)
    config = tmp_path / "grid.yaml"
    config.write_text(f"name: x\nbudgets: [100]\nmethods: [random]\nbudgets: [200]\nresults_dir: {tmp_path / 'r'}\n"
                      "runner: {executor: local}\n")
    assert main(["--config", str(config)]) == 2
    assert _one_error_line(capsys) == (f"error: {config}: invalid YAML: key 'budgets' given twice: first at line 2, "
                                       "again at line 4, column 1")
    with pytest.raises(ConfigError, match=r"key 'lr' given twice"):  # in a --set value too
        load_grid(QUICKSTART, ["methods.0={name: random, params: {lr: 1, lr: 2}}"])


@pytest.mark.parametrize("setting, expected", [
    # item 9: a batch of one pair has no negatives (the loss is 0, nothing trains)
    ("evaluation.train.batch_size=1", "evaluation.train: batch_size must be >= 2 (a contrastive batch needs at "
                                      "least one negative pair), got 1"),
    ("experts.batch_size=1", "experts: batch_size must be >= 2"),
    ("proxy.batch_size=1", "proxy: batch_size must be >= 2"),
    ("budgets=[1]", "budgets must be integers >= 2"),
    # item 15: proxy.epochs found at load, named
    ("proxy.epochs=0", "proxy: epochs must be positive, got 0"),
    # item 16: NaN / infinite rates and a momentum of 1.5
    ("methods.4.params.lr_img=.nan", "methods[4] (distill-joint).params.lr_img: expected a finite number, got nan"),
    ("methods.4.params.lr_img=.inf", "methods[4] (distill-joint).params.lr_img: expected a finite number, got inf"),
    ("methods.4.params.lr_lr=nan", "methods[4] (distill-joint).params.lr_lr: expected a finite number, got nan"),
    ("evaluation.train.lr_image=nan", "evaluation.train.lr_image: expected a finite number, got nan"),
    ("evaluation.train.momentum=1.5", "evaluation.train: momentum must be in [0, 1), got 1.5"),
    ("experts.momentum=-0.1", "experts: momentum must be in [0, 1), got -0.1"),
    # item 15: an expert epoch the experts do not record
    ("methods.4.params.max_start_epoch=9", "methods[4] (distill-joint).params: these parameters read 10 expert "
                                           "epochs (max_start_epoch 9 + expert_epochs 1), but experts.epochs is 5"),
    # item 15: a resolution the tower's pooling cannot take
    ("model.image_encoder.depth=6", "datasets[0] (embedded): resolution 32 is not divisible by 2**depth = 64"),
    # item 14: --ray-address with the local executor is a contradiction
    ("runner.executor=local", None),
    # item 20: the time limit is validated
    ("runner.cell_timeout_s=0", "runner: cell_timeout_s must be > 0 seconds"),
])
def test_values_refused_at_load(setting, expected):
    if expected is None:
        with pytest.raises(ConfigError, match=r"ray_address '10\.0\.0\.1:6379' is set but executor is 'local'"):
            load_grid(QUICKSTART, [setting, "runner.ray_address=10.0.0.1:6379"])
        return
    with pytest.raises(ConfigError) as err:
        load_grid(QUICKSTART, [setting])
    assert str(err.value).startswith(f"--set {setting!r}: {expected}"), str(err.value)


def test_a_karpathy_resolution_the_tower_cannot_take(tmp_path):
    """Item 15: found at load, not inside every cell."""
    with pytest.raises(ConfigError, match=r"datasets\[0\] \(tiny\): resolution 12 is not divisible by 2\*\*depth = 8 "
                                          r"\(image_encoder.depth 3\)"):
        load_grid(QUICKSTART, [_karpathy(tmp_path, resolution=12), "model.image_encoder.depth=3"])


@pytest.mark.parametrize("case", ["missing", "garbage", "hf-without-a-model-directory"])
def test_image_encoder_files_are_checked_before_compute(tmp_path, monkeypatch, capsys, case):
    """Item 15: a missing or garbage weights file, or ``name: hf`` on a path that is no model
    directory, is one line naming the file before any data is prepared."""
    _no_compute(monkeypatch)
    weights = tmp_path / "weights.safetensors"
    if case == "garbage":
        weights.write_bytes(b"\xff" * 64)
    sets = [f"model.image_encoder.path={weights}", "model.image_encoder.name=convnet"]
    if case == "hf-without-a-model-directory":
        sets = [f"model.image_encoder.path={tmp_path}", "model.image_encoder.name=hf"]
    assert main(_cli(tmp_path, sets=[s for s in TINY if not s.startswith("model=")] + sets)) == 2
    line = _one_error_line(capsys)
    expected = {"missing": f"error: model.image_encoder.path '{weights}': no such weights file",
                "garbage": f"error: model.image_encoder.path '{weights}' is not a readable weights file (Safetensor",
                "hf-without-a-model-directory": f"error: model.image_encoder.path '{tmp_path}': not a transformers "
                                                "model directory (no config.json)"}[case]
    assert line.startswith(expected), line
    assert not (tmp_path / "results").exists()


def test_an_unreachable_ray_cluster_is_one_line(tmp_path, monkeypatch, capsys):
    """Item 14: ray.init retried an unreachable address without end; the address is tried first."""
    import socket

    _no_compute(monkeypatch)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sets = [s for s in TINY if s != "runner.executor=local"]
    assert main(_cli(tmp_path, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", sets=sets)) == 2
    assert _one_error_line(capsys).startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}: ")


# ----------------------------------------------------------------------------- issue 20: no tracebacks


@pytest.mark.parametrize("where", ["a directory", "under a file", "read-only"])
def test_table_output_that_cannot_be_written(tmp_path, monkeypatch, capsys, where):
    """Item 18: ``table --output`` to a directory, under a file or on a read-only filesystem."""
    from tests.test_reports import _record, _write

    results = tmp_path / "results"
    _write(results / "records", "r.json", _record("random", "coreset", 10, 0, 20.0))  # no grid.json: shown
    (tmp_path / "afile").write_text("x")
    target = {"a directory": tmp_path, "under a file": tmp_path / "afile" / "t.md",
              "read-only": tmp_path / "ro" / "t.md"}[where]
    if where == "read-only":
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(bench_io.os, "replace", read_only)
    assert main(["table", str(results), "--output", str(target)]) == 2
    reason = {"a directory": "it is a directory", "under a file": "a parent is a file",
              "read-only": "read-only filesystem"}[where]
    assert _one_error_line(capsys) == f"error: cannot write {target}: {reason}"


def test_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    """Item 18: a KeyboardInterrupt mid-run printed 70 lines of traceback."""
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(GridRun, "run", interrupted)
    assert main(_cli(tmp_path)) == 130  # 128 + SIGINT, as a shell reports it
    captured = capsys.readouterr()
    assert captured.err == "interrupted; rerun the same command to resume (finished cells are kept)\n"


def test_unwritable_records_are_found_before_compute(tmp_path, monkeypatch):
    """Item 18: a read-only ``records/`` failed with a PermissionError when the first stale
    record was moved; every existing folder of the results directory is checked up front."""
    _no_compute(monkeypatch)
    grid = tiny_grid(tmp_path)
    records = Path(grid.results_dir) / "records"
    records.mkdir(parents=True)
    real = bench_io.write_text_atomic

    def read_only_records(path, text):
        if Path(path).parent == records:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, text)

    monkeypatch.setattr(bench_io, "write_text_atomic", read_only_records)
    with pytest.raises(UnusableDirectoryError, match=rf"results_dir folder records/: {records} cannot be written: "
                                                     "read-only filesystem"):
        GridRun(grid, progress=False).run()


def test_a_stale_record_that_cannot_be_moved_is_one_line(tmp_path, monkeypatch):
    """Item 18: ``store.retire`` turned a PermissionError into a traceback."""
    from bench.grid import store as store_module
    from bench.grid.store import ResultStore

    store = ResultStore(tmp_path)
    store.record_path("c").parent.mkdir(parents=True)
    store.record_path("c").write_text("{}")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(store_module.os, "replace", refuse)
    with pytest.raises(UnusableDirectoryError, match=r"cannot move the stale file .*c\.json to .*stale/h/records/c\.json: "
                                                     r"permission denied"):
        store.retire("c", "h")


def test_tune_space_errors_name_what_was_typed(tmp_path):
    """Item 19: a value twice ran the same trial twice; item 22: an unknown parameter was
    reported under the internal trial label ``distill-joint-t00``."""
    from bench.commands.tune import main as tune_main
    from bench.commands.tune import parse_space

    with pytest.raises(ConfigError, match=r"^--space 'lr_txt=\[2, 2\]' lists 2 more than once \(\[2, 2\]\)"):
        parse_space(["lr_txt=[2, 2]"])
    args = ["--config", QUICKSTART, "--method", "distill-joint", "--budget", "10", "--set", f"results_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"^--space 'lr_imgg=\[1, 2\]': method distill-joint: unknown config key "
                                          r"'lr_imgg'; did you mean 'lr_img'"):
        tune_main(args + ["--space", "lr_imgg=[1, 2]"])
    with pytest.raises(ConfigError, match=r"^--space: the trial lr_img=-1 \(at 10 pairs\) is invalid: "
                                          r"lr_img must be >= 0"):
        tune_main(args + ["--space", "lr_img=[1, -1]"])


def test_table_of_a_file_and_of_a_truncated_record(tmp_path, capsys):
    """Item 22: ``table afile`` said the directory "does not exist"; a truncated record was
    counted among the foreign records and listed as missing (reported twice)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["table", str(afile)]) == 2
    assert _one_error_line(capsys) == f"error: {afile} is a file, not a results directory"

    grid = tiny_grid(tmp_path, methods=["random"], include_full=False,
                     evaluation={"seeds": [0], "train": {"epochs": 1, "batch_size": 10}})
    GridRun(grid, progress=False).run()
    record = Path(grid.results_dir) / "records" / "embedded__random__b10__s0.json"
    record.write_text(record.read_text()[:50])
    assert main(["table", grid.results_dir]) == 2  # no record left to show
    err = capsys.readouterr().err
    assert err.count("embedded__random__b10__s0") == 1 and "belong to no cell" not in err, err
