"""Issue 27: the bad-input and fault battery. Each test is named after the defect it pins; each
failed on the code before the fix (a file replaced, a number trusted, an error found only after
compute, exit status 0, or words that misled)."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch

from bench.commands.cli import main
from bench.core.config import ConfigError
from bench.core.io import UnusableDirectoryError, UnwritableFileError, directory_lock, write_text_atomic
from bench.grid.runner import GridRun
from bench.grid.spec import load_grid
from tests.grid_helpers import tiny_grid
from tests.test_reports import _record, _write
from tests.test_user_errors import QUICKSTART, _cli, _no_compute, _one_error_line

# ----------------------------------------------------------------------------- 1. atomic writes


def _one_record_dir(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    _write(results / "records", "r.json", _record("random", "coreset", 10, 0, 20.0))  # no grid.json: shown
    return results


def test_table_output_writes_through_a_symlink(tmp_path, capsys):
    results = _one_record_dir(tmp_path)
    real = tmp_path / "real.md"
    real.write_text("old")
    link = tmp_path / "link.md"
    link.symlink_to(real)
    assert main(["table", str(results), "--output", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link stays a link
    assert "random" in real.read_text()  # and the file it names holds the table


def test_atomic_writers_refuse_a_fifo_and_keep_it(tmp_path, capsys):
    results = _one_record_dir(tmp_path)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert main(["table", str(results), "--output", str(pipe)]) == 2
    assert _one_error_line(capsys) == (f"error: cannot write {pipe}: it is a named pipe (FIFO), not a regular file; "
                                       "give the name of a regular file or a new one")
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    # Every atomic writer: a link to a FIFO (e.g. a symlinked tables/x.md) is refused too.
    link = tmp_path / "tables" / "x.md"
    link.parent.mkdir()
    link.symlink_to(pipe)
    with pytest.raises(UnwritableFileError, match=r"it is a named pipe \(FIFO\), not a regular file \(the link points"):
        write_text_atomic(link, "x")
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(pipe).st_mode)


# ----------------------------------------------------------------------------- 2. table and set files


def _with_set(results: Path, name: str, record: dict, content: bytes) -> dict:
    import hashlib

    set_file = results / "sets" / f"{name}.pt"
    set_file.parent.mkdir(parents=True, exist_ok=True)
    set_file.write_bytes(content)
    record = {**record, "cell_id": name, "cell_hash": f"h-{name}", "set_file": f"sets/{name}.pt",
              "set_bytes": len(content), "set_sha256": hashlib.sha256(content).hexdigest()}
    _write(results / "records", f"{name}.json", record)
    return record


def _two_cells(tmp_path: Path, manifest: bool) -> Path:
    from bench.grid.store import ResultStore

    results = tmp_path / "results"
    cells = {}
    for method, base in (("random", 20.0), ("herding", 60.0)):
        name = f"flickr30k__{method}__b10__s0"
        record = _with_set(results, name, _record(method, "coreset", 10, 0, base), b"0123456789")
        cells[name] = record["cell_hash"]
    if manifest:
        ResultStore(results).write_manifest("g", "c", cells)
    return results


def _columns(table: str) -> list[str]:
    header = next(line for line in table.splitlines() if line.startswith("| pairs"))
    return [c.strip() for c in header.strip("|").split("|")]


def test_table_applies_the_runs_set_file_rule_with_grid_json(tmp_path, capsys):
    """A set file changed in place (same size) is not current: the run would recompute it."""
    results = _two_cells(tmp_path, manifest=True)
    (results / "sets" / "flickr30k__herding__b10__s0.pt").write_bytes(b"9876543210")  # same size
    assert main(["table", str(results)]) == 0
    captured = capsys.readouterr()
    assert _columns(captured.out) == ["pairs", "metric", "random", "full"]  # no herding column
    assert "flickr30k__herding__b10__s0 (not finished: its set file" in captured.err
    assert "has changed since the record was written" in captured.err


def test_table_applies_the_runs_set_file_rule_without_grid_json(tmp_path, capsys):
    """Without grid.json a record whose set file is missing is not shown either."""
    results = _two_cells(tmp_path, manifest=False)
    (results / "sets" / "flickr30k__herding__b10__s0.pt").unlink()
    assert main(["table", str(results)]) == 0
    captured = capsys.readouterr()
    assert _columns(captured.out) == ["pairs", "metric", "random", "full"]  # no herding column
    assert "flickr30k__herding__b10__s0 (not finished: its set file" in captured.err and "is missing" in captured.err


# ----------------------------------------------------------------------------- 3-6. checked at load


STUDENT = "evaluation.students.other"


@pytest.mark.parametrize("setting, expected", [
    (f"{STUDENT}={{image_encoder: {{width: 8, depth: 6}}}}",
     "datasets[0] (embedded): resolution 32 is not divisible by 2**depth = 64 (image_encoder.depth 6); "
     f"{STUDENT} (an evaluation student) cannot take these images"),
    (f"{STUDENT}={{image_encoder: {{width: 8, depth: 2, freeze: true}}}}",
     f"{STUDENT}: a frozen image tower (image_encoder.freeze) needs a trainable image projection: set embed_dim"),
])
def test_evaluation_students_are_checked_at_load(setting, expected):
    with pytest.raises(ConfigError) as err:
        load_grid(QUICKSTART, [setting])
    assert str(err.value) == f"--set {setting!r}: {expected}"


@pytest.mark.parametrize("case", ["missing weights", "unknown package file", "missing hf directory"])
def test_evaluation_students_files_are_checked_before_compute(tmp_path, monkeypatch, capsys, case):
    _no_compute(monkeypatch)
    encoder = {"missing weights": f"{{name: convnet, width: 8, depth: 2, path: {tmp_path / 'no.safetensors'}}}",
               "unknown package file": "{name: convnet, width: 8, depth: 2, path: 'package:nothing.safetensors'}",
               "missing hf directory": f"{{name: hf, path: {tmp_path / 'nowhere'}}}"}[case]
    assert main(_cli(tmp_path, sets=[f"{STUDENT}={{image_encoder: {encoder}}}"])) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {STUDENT}.image_encoder.path "), line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("setting, expected", [
    ("evaluation.train.weight_decay=-1", "evaluation.train: weight_decay must be >= 0, got -1.0"),
    ("evaluation.full_train.weight_decay=-0.5", "evaluation.full_train: weight_decay must be >= 0, got -0.5"),
    ("experts.seed=-1", "experts: seed must be >= 0, got -1"),
    ("methods=[{name: el2n, params: {epochs: [2]}}]",
     "methods[0] (el2n).params.epochs [2]: epoch 2 is not recorded by the proxy (proxy.gallery_epochs [1])"),
    ("methods=[{name: ccs, params: {score: el2n, el2n_epochs: [3]}}]",
     "methods[0] (ccs).params.el2n_epochs [3]: epoch 3 is not recorded by the proxy (proxy.gallery_epochs [1])"),
    ("methods=[{name: el2n, budget_params: {100: {epochs: [2]}}}]",
     "methods[0] (el2n).budget_params.100.epochs [2]: epoch 2 is not recorded"),
])
def test_values_that_fail_in_every_cell_are_refused_at_load(setting, expected):
    with pytest.raises(ConfigError) as err:
        load_grid(QUICKSTART, [setting])
    assert str(err.value).startswith(f"--set {setting!r}: {expected}"), str(err.value)


@pytest.mark.parametrize("method, budget, expected", [
    ({"name": "clip-score", "params": {"max_per_image": 1}}, 20,
     "methods[0] (clip-score).params on embedded: budget 20 is more than 10 images x max_per_image 1 allow (10 pairs)"),
    ({"name": "ccs", "params": {"beta": 0.9}}, 10,
     "methods[0] (ccs).params on embedded: budget 10 is more than the 5 pairs left after pruning the hardest beta=0.9 "
     "of 50"),
])
def test_budgets_a_methods_parameters_cannot_fill_are_refused_before_compute(tmp_path, monkeypatch, method, budget,
                                                                             expected):
    def no_cells(self, todo):
        raise AssertionError("cells started")

    monkeypatch.setattr(GridRun, "_execute", no_cells)
    grid = tiny_grid(tmp_path, methods=[method], budgets=[budget], include_full=False,
                     datasets=[{"source": "embedded", "embedded": {"n_train_images": 10, "n_val_images": 2,
                                                                   "n_test_images": 4, "resolution": 16}}])
    with pytest.raises(ConfigError) as err:
        GridRun(grid, progress=False).run()
    assert str(err.value).startswith(expected), str(err.value)
    assert not (Path(grid.results_dir) / "grid.json").exists()


# ----------------------------------------------------------------------------- 7. a file in the way


@pytest.mark.parametrize("folder", ["records", "sets"])
def test_a_file_named_like_a_results_folder_is_found_before_compute(tmp_path, monkeypatch, folder):
    _no_compute(monkeypatch)
    grid = tiny_grid(tmp_path)
    results = Path(grid.results_dir)
    results.mkdir()
    (results / folder).write_text("not a folder")
    with pytest.raises(UnusableDirectoryError, match=rf"^results_dir folder {folder}/: {results / folder} is a file, "
                                                     "not a directory$"):
        GridRun(grid, progress=False).run()
    assert not (results / "grid.json").exists()


# ----------------------------------------------------------------------------- 8. tune without a winner


FAILING = '''
from bench.methods_api import Method
from bench.registry import register


@register("always-fails", "coreset", "a method that always raises (a test plugin)")
class AlwaysFails(Method):
    def run(self, ctx, budget, seed):
        raise RuntimeError("this method always fails")
'''


def test_tune_exits_non_zero_when_every_trial_failed(tmp_path, isolated_registry):
    from bench.commands.tune import main as tune_main

    plugin = tmp_path / "always_fails_plugin.py"
    plugin.write_text(FAILING)
    config = tmp_path / "grid.yaml"
    config.write_text(json.dumps({
        "name": "t", "results_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache"),
        "datasets": [{"source": "embedded", "embedded": {"n_train_images": 10, "n_val_images": 2,
                                                         "n_test_images": 4, "resolution": 16}}],
        "model": {"image_encoder": {"width": 8, "depth": 2}},
        "evaluation": {"seeds": [0], "train": {"epochs": 1, "batch_size": 10}},
        "methods": ["always-fails"], "budgets": [10], "runner": {"executor": "local", "max_retries": 0}}))
    code = tune_main(["--config", str(config), "--plugin", str(plugin), "--method", "always-fails",
                      "--budget", "10", "--no-progress"])
    assert code == 1
    summary = json.loads((tmp_path / "results" / "tune" / "always-fails-b10" / "summary.json").read_text())
    assert summary["ranked"] == []


# ----------------------------------------------------------------------------- 9, 12. published numbers


def test_an_empty_reference_csv_is_one_line(tmp_path, capsys):
    results = _one_record_dir(tmp_path)
    empty = tmp_path / "ref.csv"
    empty.write_text("")
    assert main(["table", str(results), "--reference", str(empty)]) == 2
    assert _one_error_line(capsys).startswith(f"error: {empty}: the reference CSV is empty")


@pytest.mark.parametrize("value, std, expected", [
    ("-5", "", "value -5 is not a recall in [0, 100] (percent)"),
    ("inf", "", "value inf is not a recall in [0, 100] (percent)"),
    ("101", "", "value 101 is not a recall in [0, 100] (percent)"),
    ("5", "-1", "std -1 is not a finite number >= 0"),
])
def test_published_values_that_are_no_recall_are_refused(tmp_path, capsys, value, std, expected):
    results = _one_record_dir(tmp_path)
    ref = tmp_path / "ref.csv"
    ref.write_text(f"source,dataset,pairs,method,metric,value,std\nvl-distill,flickr30k,10,random,tr@1,{value},{std}\n")
    assert main(["table", str(results), "--reference", str(ref)]) == 2
    assert _one_error_line(capsys) == f"error: {ref}: row 2 (vl-distill, random, 10 pairs, tr@1): {expected}"


def test_table_source_must_name_a_source_of_the_reference(tmp_path, capsys):
    results = _one_record_dir(tmp_path)
    assert main(["table", str(results), "--reference", "paper", "--source", "bogus"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: --source 'bogus' is not a source of the reference paper (its sources: ")
    assert "lors" in line and "vl-distill" in line
    assert main(["table", str(results), "--source", "lors"]) == 2  # without published numbers it chooses nothing
    assert _one_error_line(capsys).startswith("error: --source 'lors' chooses among the published numbers of "
                                              "--reference")
    assert main(["table", str(results), "--reference", "paper", "--source", "lors"]) == 0


# ----------------------------------------------------------------------------- 10. cache listing


@pytest.mark.parametrize("case", ["missing", "a file"])
def test_cache_listing_of_a_cache_dir_that_is_missing_or_a_file(tmp_path, capsys, case):
    cache = tmp_path / "cache"
    if case == "a file":
        cache.write_text("x")
    assert main(["cache", "--set", f"cache_dir={cache}", "--set", f"results_dir={tmp_path / 'r'}"]) == 2
    what = "is a file, not a directory" if case == "a file" else "does not exist (nothing was cached there)"
    assert _one_error_line(capsys).startswith(f"error: cache_dir {cache} {what}")


# ----------------------------------------------------------------------------- 11. who brought the value in


def test_an_error_of_ray_address_names_the_option(tmp_path, capsys):
    assert main(_cli(tmp_path, "--ray-address", "10.0.0.1:6379")) == 2  # the tiny grid's executor is local
    assert _one_error_line(capsys).startswith("error: --ray-address '10.0.0.1:6379': runner: ray_address "
                                              "'10.0.0.1:6379' is set but executor is 'local'")


def test_tune_set_errors_name_the_set(tmp_path):
    from bench.commands.tune import main as tune_main

    args = ["--config", QUICKSTART, "--method", "random", "--budget", "10", "--set", f"results_dir={tmp_path}",
            "--set", "evaluation.train.momentum=1.5"]
    with pytest.raises(ConfigError, match=r"^--set 'evaluation.train.momentum=1.5': evaluation.train: momentum "
                                          r"must be in \[0, 1\), got 1.5"):
        tune_main(args)


# ----------------------------------------------------------------------------- 13. non-finite output


@pytest.mark.parametrize("part", ["pairs.images", "pairs.text_emb", "learned_lrs['image']"])
def test_non_finite_method_output_names_the_method_and_the_tensor(part):
    from bench.data.pairs import PairSet
    from bench.grid.cell import check_output
    from bench.grid.spec import Cell
    from bench.methods_api import MethodOutput

    images, texts = torch.zeros(4, 3, 8, 8), torch.zeros(4, 6)
    lrs = {"image": 0.1, "text": 0.1}
    if part == "pairs.images":
        images[1, 0, 2, 2] = math.nan
    elif part == "pairs.text_emb":
        texts[3] = math.inf
    else:
        lrs["image"] = math.nan
    output = MethodOutput(PairSet.synthetic(images, texts), learned_lrs=lrs)
    with pytest.raises(ValueError, match=r"^method 'broken' returned non-finite values \(NaN or infinity\) in "
                                         + part.replace("[", r"\[").replace("]", r"\]")):
        check_output(output, Cell("d", "broken", 4, 0), "distillation", 100)


# ----------------------------------------------------------------------------- 14. a lock that is no file


def test_a_lock_that_is_a_directory_is_named_as_such(tmp_path):
    (tmp_path / ".lock").mkdir()
    with pytest.raises(UnusableDirectoryError) as err:
        with directory_lock(tmp_path, "results_dir"):
            pass
    assert str(err.value) == (f"results_dir {tmp_path} cannot be locked: {tmp_path / '.lock'} is a directory, not the "
                              f"lock file a run writes; remove it (rm -r {tmp_path / '.lock'}) and rerun")
    assert (tmp_path / ".lock").is_dir()


# ----------------------------------------------------------------------------- also seen: parameters beyond the data


def test_a_lors_rank_above_the_budget_is_refused():
    from methods.distill.lors import Lors, LorsConfig

    assert Lors.budget_problem(LorsConfig(rank=50), 10, None) == (
        "rank 50 is more than the budget 10 (the learned similarity is 10 x 10); lower rank, for this budget "
        "through budget_params")
    assert Lors.budget_problem(LorsConfig(rank=10), 10, None) is None


def test_sizes_beyond_the_data_are_clamped_with_a_warning():
    import numpy as np

    from methods.coresets import ccs, facility_location
    from methods.distill.mdm import MdmConfig, warn_clamped

    features = np.random.default_rng(0).normal(size=(60, 8))
    with pytest.warns(UserWarning, match=r"^facility-location: neighbours 1000 is more than the 60 pairs; using 60$"):
        facility_location.knn_graph(features, 1000, np.random.default_rng(0), "exact")
    with pytest.warns(UserWarning, match=r"^ccs: strata 1000 is more than the 54 pairs left after pruning"):
        assert len(ccs.select(features[:, 0], 5, np.random.default_rng(0), beta=0.1, k=1000)) == 5
    with pytest.warns(UserWarning, match=r"^mdm: batch_real 100000 is more than the 60 training pairs; using 60$"):
        warn_clamped(MdmConfig(batch_real=100000), 60, 100)
