"""A new user's first hour (issue 26, items 5 and 8): a log file that says what runs, a plugin
API that describes itself (``methods NAME``, the public trajectory-matching base class, the
editable-set helper, the plugin hint), ``run --dry-run``, the narrow ``protocols`` view, and
the warning for a distilled set whose images saturate."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench import registry
from bench.commands.cli import main
from bench.core.config import ConfigError
from bench.core.progress import TaskLines
from bench.data.pairs import PairSet, normalize_images, saturation
from bench.distill.matching import MatchingConfig
from bench.grid.cell import SATURATION_WARN_FRACTION, SaturationWarning, warn_if_saturated
from bench.grid.runner import GridRun
from bench.grid.spec import Cell, validate_methods
from bench.methods_api import Method, MethodOutput, check_budget, editable_set
from tests.grid_helpers import tiny_grid

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_EVAL = {"seeds": [0], "train": {"epochs": 2, "batch_size": 10}, "full_train": {"epochs": 1, "batch_size": 64}}


# ----------------------------------------------------------------------------- log lines

def test_task_lines_say_start_done_and_failed_with_times(capsys):
    ticks = iter([10.0, 22.34, 30.0, 31.5])
    lines = TaskLines(clock=lambda: next(ticks))
    lines.start("expert 3 of embedded")
    lines.end("expert 3 of embedded")
    lines.start("cell a")
    lines.end("cell a", "ValueError: bad\nmore lines", "  [2/5]")
    lines.end("cell b", "RuntimeError: expert 0 of embedded failed: boom")
    assert capsys.readouterr().out.splitlines() == [
        "start expert 3 of embedded",
        "done  expert 3 of embedded in 12.3 s",
        "start cell a",
        "failed cell a after 1.5 s: ValueError: bad  [2/5]",
        "failed cell b (not started): RuntimeError: expert 0 of embedded failed: boom",
    ]


class _Bright(Method):
    """Returns synthetic images far outside the range of real ones (every pixel value 10)."""

    def run(self, ctx, budget, seed):
        check_budget(budget, ctx.n_pairs)
        real = ctx.real_subset(np.arange(budget))
        images = torch.full((budget, 3, *real.images.shape[2:]), 10.0)
        return MethodOutput(pairs=PairSet.synthetic(images, real.text_emb.clone()))


class _Broken(Method):
    def run(self, ctx, budget, seed):
        raise RuntimeError("this method is broken")


def test_a_run_into_a_log_prints_a_line_per_task_and_warns_of_saturated_images(tmp_path, capsys,
                                                                              isolated_registry):
    """stdout is not a terminal here (captured): the run asked for progress bars, but prints
    one flushed line per task with its time instead, and no bar. A method whose images left
    the range of real images is warned about, naming the method and the fraction."""
    registry.register("test-ux-bright", "distillation", "saturated images")(_Bright)
    registry.register("test-ux-broken", "coreset", "always fails")(_Broken)
    grid = tiny_grid(tmp_path, methods=["random", "test-ux-bright", "test-ux-broken"], include_full=False,
                     evaluation=TINY_EVAL, runner={"executor": "local", "max_retries": 0})
    with pytest.warns(SaturationWarning, match=r"method 'test-ux-bright' \(cell embedded__test-ux-bright__b10__s0\): "
                                               r"100% of its images' pixel values"):
        run = GridRun(grid, progress=True).run()
    assert len(run.done) == 2 and len(run.failed) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines.index("start prepare dataset embedded") < lines.index("start cell embedded__random__b10__s0")
    assert re.search(r"^done  prepare dataset embedded in \d+\.\d s$", out, re.M)
    assert lines.index("start cell embedded__random__b10__s0") < next(
        i for i, line in enumerate(lines) if line.startswith("done  cell embedded__random__b10__s0"))
    assert re.search(r"^done  cell embedded__random__b10__s0 in \d+\.\d s  \[1/3\]$", out, re.M)
    assert re.search(r"^done  cell embedded__test-ux-bright__b10__s0 in \d+\.\d s  \[2/3\]$", out, re.M)
    assert re.search(r"^failed cell embedded__test-ux-broken__b10__s0 after \d+\.\d s: RuntimeError: this method "
                     r"is broken  \[3/3\]$", out, re.M)
    assert "━" not in out  # no progress bar drawn into the log


def test_saturation_counts_values_beyond_the_range_of_real_images():
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert saturation(pixels) == (0.0, 0.0, 1.0)
    real = normalize_images(pixels)
    fraction, low, high = saturation(real)  # real pixels, normalised: inside [0, 1]
    assert fraction == 0.0 and low >= -1e-6 and high <= 1 + 1e-6
    half = real.clone()
    half[:2] = 50.0  # two of the four images far beyond white
    fraction, _, high = saturation(half)
    assert fraction == pytest.approx(0.5) and high > 10
    cell = Cell("embedded", "distill-joint", 4, 0)
    with pytest.warns(SaturationWarning, match=r"method 'distill-joint' .*: 50% of its images"):
        assert warn_if_saturated(MethodOutput(pairs=PairSet.synthetic(half, torch.zeros(4, 5))), cell) == 0.5
    slight = real.clone()
    slight[0, 0, 0, :3] = 50.0  # 3 values of 768: under the threshold
    assert saturation(slight)[0] < SATURATION_WARN_FRACTION
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaturationWarning)  # no warning under the threshold
        warn_if_saturated(MethodOutput(pairs=PairSet.synthetic(slight, torch.zeros(4, 5))), cell)


# ----------------------------------------------------------------------------- methods NAME

def test_methods_name_prints_parameters_with_types_defaults_and_search_space(capsys):
    assert main(["methods", "lors"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lors (distillation): LoRS")
    params = out.split("search space")[0]  # the parameter rows; the spaces below nest deeper
    rows = {line.split()[0]: line.split(None, 1)[1] for line in params.splitlines()
            if line.startswith("  ") and len(line.split()) > 1}
    assert rows["lr_sim"].split() == ["float", "10.0"]
    assert rows["loss"].split() == ["'wbce'", "|", "'infonce'", "'wbce'"]
    assert rows["batch_syn"].split() == ["int", "|", "None", "None"]
    assert rows["iterations"].split() == ["int", "200"]  # inherited from MatchingConfig
    # lors declares its space around the entry's recipe (docs/tuning.md)
    space = out.split("search space (default_search)")[1].split("search space per budget")[0]
    assert "alpha: 0.01, 0.1, 1.0" in space and "times: 0.3, 1, 3" in space and "none declared" not in space
    assert "min_start_epoch: 0, 1, 2" in out.split("search space per budget")[1]


def test_methods_name_prints_a_declared_search_space(capsys, isolated_registry):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Params:
        """Knobs of a test method."""

        lr: float = 0.1
        k: int = 2

    @registry.register("test-ux-searchable", "coreset", "declares its search space")
    class Searchable(Method):
        default_search = {"lr": {"low": 1e-3, "high": 1.0, "log": True}, "k": [1, 2, 4]}
        default_budget_search = {10: {"k": [1, 2]}}

        def run(self, ctx, budget, seed):
            raise NotImplementedError

    Searchable.Params = Params
    assert main(["methods", "test-ux-searchable"]) == 0
    out = capsys.readouterr().out
    assert "  Knobs of a test method." in out
    assert "search space (default_search):\n  lr: 0.001 .. 1.0 (log scale)\n  k: 1, 2, 4\n" in out
    assert "search space per budget (default_budget_search):\n  10:\n    k: 1, 2\n" in out


def test_an_unknown_method_name_hints_at_plugins(capsys, tmp_path):
    assert main(["methods", "longest-captions"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'longest-captions'")
    assert "defined in a plugin? pass --plugin FILE" in err
    grid = tiny_grid(tmp_path, methods=["random", "kcentre"])  # a close match is still offered
    with pytest.raises(ConfigError, match=r"did you mean 'kcenter'.*defined in a plugin\? pass --plugin FILE"):
        validate_methods(grid)


PLUGIN = '''
from bench.registry import register
from bench.trajectory_api import TrajectoryMatching


@register("test-ux-matching", "distillation", "trajectory matching, images only (a plugin)")
class ImagesOnly(TrajectoryMatching):
    learn_images, learn_texts = True, False
'''


def test_a_plugin_subclasses_the_public_trajectory_matching_class(tmp_path, capsys, isolated_registry):
    plugin = tmp_path / "matching_plugin.py"
    plugin.write_text(PLUGIN)
    assert main(["methods", "test-ux-matching", "--plugin", str(plugin)]) == 0
    out = capsys.readouterr().out
    assert "test-ux-matching (distillation)" in out and "reads: expert trajectories" in out
    assert re.search(r"^  max_start_epoch +int +2$", out, re.M)
    builtin = [registry.get_method(n) for n in ("distill-image", "distill-text", "distill-joint", "lors", "repblend")]
    base = registry.get_method("test-ux-matching").__mro__[1]
    assert base.__module__ == "bench.trajectory_api" and all(issubclass(cls, base) for cls in builtin)


# ----------------------------------------------------------------------------- editable sets

def _pairs(float_images: bool = False) -> PairSet:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=gen)
    if float_images:
        images = normalize_images(images)
    return PairSet(images, torch.tensor([0, 0, 2, 4]), torch.randn(4, 6, generator=gen), torch.tensor([7, 8, 9, 11]))


@pytest.mark.parametrize("float_images", [False, True])
def test_editable_set_is_a_detached_copy_with_leaf_tensors_that_learn(float_images):
    real = _pairs(float_images)
    before = (real.images.clone(), real.text_emb.clone())
    start = editable_set(real)
    assert start.images.shape == (4, 3, 4, 4) and start.texts.shape == (4, 6)
    for t in (start.images, start.texts):
        assert t.is_leaf and t.requires_grad and t.dtype == torch.float32
    assert torch.equal(start.images.detach(), normalize_images(real.images[real.image_index]).float())
    assert torch.equal(start.texts.detach(), real.text_emb)
    assert start.source_indices.tolist() == [7, 8, 9, 11]
    optimiser = torch.optim.SGD([start.images, start.texts], lr=1.0)
    (start.images.sum() + start.texts.sum()).backward()
    optimiser.step()  # an update in place never reaches the pairs it was copied from
    assert torch.equal(real.images, before[0]) and torch.equal(real.text_emb, before[1])
    out = start.pairs()
    assert out.source_indices is None and not out.images.requires_grad and len(out) == 4


def test_trajectory_matching_starts_from_the_editable_set():
    from bench.trajectory_api import synthetic_start

    real = _pairs()
    learned = synthetic_start(real, MatchingConfig(), learn_images=True, learn_texts=True)
    start = editable_set(real)
    assert torch.equal(learned["images"].value, start.images.detach())
    assert torch.equal(learned["texts"].value, start.texts.detach())
    learned["texts"].value.add_(1.0)  # the matcher's values are not the split's tensors
    assert not torch.equal(real.text_emb, learned["texts"].value)


# ----------------------------------------------------------------------------- --dry-run

def _config(tmp_path: Path, methods: list) -> Path:
    grid = {
        "name": "tiny", "results_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache"),
        "datasets": [{"source": "embedded", "embedded": {"n_train_images": 60, "n_val_images": 4,
                                                         "n_test_images": 30, "resolution": 16}}],
        "model": {"image_encoder": {"width": 8, "depth": 2}}, "evaluation": TINY_EVAL,
        "proxy": {"epochs": 1, "batch_size": 64}, "experts": {"n_experts": 2, "epochs": 2, "batch_size": 32},
        "methods": methods, "budgets": [10], "method_seeds": [0], "runner": {"executor": "local"},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_dry_run_lists_cells_cached_or_to_compute_and_computes_nothing(tmp_path, capsys):
    methods = ["random", "kcenter", {"name": "distill-joint", "params": {"max_start_epoch": 1}}]
    config = _config(tmp_path, methods)
    assert main(["run", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run of grid tiny: 4 cells, 0 cached, 4 to compute" in out
    for cell in ("embedded__full", "embedded__random__b10__s0", "embedded__kcenter__b10__s0",
                 "embedded__distill-joint__b10__s0"):
        assert re.search(rf"^  to compute  {cell}$", out, re.M), cell
    assert "embedded: experts: 0 of 2 cached, 2 to train" in out
    assert "embedded: proxy runs: 0 of 1 cached, 1 to train" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()

    GridRun(_grid_of(config, ["random"]), progress=False).run()  # the full and random cells
    capsys.readouterr()
    before = _snapshot(tmp_path / "results") | _snapshot(tmp_path / "cache")
    assert main(["run", "--config", str(config), "--dry-run", "--set", "evaluation.train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "4 cells, 2 cached, 2 to compute" in out
    assert re.search(r"^  cached      embedded__random__b10__s0$", out, re.M)
    assert re.search(r"^  to compute  embedded__kcenter__b10__s0$", out, re.M)
    assert _snapshot(tmp_path / "results") | _snapshot(tmp_path / "cache") == before  # nothing written
    assert main(["run", "--config", str(config), "--dry-run", "--set", "evaluation.train.epochs=3"]) == 0
    assert re.search(r"^  to compute  embedded__random__b10__s0  \(its record is of an older recipe\)$",
                     capsys.readouterr().out, re.M)


def test_dry_run_of_a_tuned_grid_says_the_trials_come_first(tmp_path, capsys):
    methods = [{"name": "kcenter"}, {"name": "facility-location", "search": "default"},
               {"name": "el2n", "search": {"keep": ["lowest", "highest"]}}]
    config = _config(tmp_path, methods)
    data = yaml.safe_load(config.read_text())
    data["tuning"] = {"trials": 3}
    config.write_text(yaml.safe_dump(data))
    assert main(["run", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  tuning first: 2 \(dataset, method, budget\) group\(s\) x 3 trial\(s\) on val ", out, re.M)
    assert str(tmp_path / "results" / "tuning") in out
    assert main(["run", "--config", str(config), "--dry-run", "--set", "tuning=null"]) == 0
    assert "tuning first" not in capsys.readouterr().out
    assert not (tmp_path / "results").exists()


def _grid_of(config: Path, methods: list):
    from bench.grid.spec import load_grid

    return load_grid(config, [f"methods=[{', '.join(methods)}]"])


# ----------------------------------------------------------------------------- protocols

def test_protocols_is_narrow_by_default_and_wide_on_request(capsys):
    assert main(["protocols"]) == 0
    narrow = capsys.readouterr().out
    assert "best test epoch (test-selected, optimistic)" in narrow and "--wide" in narrow
    assert "distill.py:512" not in narrow and "source of each value" not in narrow
    assert main(["protocols", "--wide"]) == 0
    assert "source of each value" in capsys.readouterr().out


# ----------------------------------------------------------------------------- Ray's output

def test_the_suite_says_in_one_line_which_cluster_a_run_uses():
    from bench.grid.executors.ray_dispatch import cluster_line

    assert cluster_line(None, {"CPU": 2.0, "memory": 1e9}, 1) == "ray: started a local cluster with 2 CPUs"
    assert (cluster_line("10.0.0.1:6379", {"CPU": 64.0, "GPU": 8.0}, 2)
            == "ray: joined the cluster at 10.0.0.1:6379 (2 nodes, 64 CPUs, 8 GPUs)")


def test_the_ray_executor_turns_off_autoscaler_event_lines_unless_the_user_asks():
    """Ray reads RAY_SCHEDULER_EVENTS once, when imported: importing the executor first (as a
    run does) turns the autoscaler's event lines off; a value in the environment wins."""
    import os
    import subprocess
    import sys

    code = ("import bench.grid.executors.ray_dispatch, ray._private.ray_constants as c; "
            "print(c.AUTOSCALER_EVENTS)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_SCHEDULER_EVENTS"}
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    asked = subprocess.run([sys.executable, "-c", code], env={**env, "RAY_SCHEDULER_EVENTS": "1"},
                           capture_output=True, text=True, check=True)
    assert (quiet.stdout.strip(), asked.stdout.strip()) == ("0", "1")
