"""`run_bench.py tune`: a method's parameters searched per budget on the val split only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.commands.tune import parse_space, rank, trials, tuning_data
from bench.core.config import ConfigError
from tests.grid_helpers import REPO

PLUGIN = '''
from dataclasses import dataclass
import numpy as np
from bench.methods_api import Method, MethodOutput, check_budget
from bench.registry import register


@dataclass(frozen=True)
class OffsetParams:
    offset: int = 0
    stride: int = 1


@register("offset-k", "coreset", "pairs offset, offset + stride, ... (a test plugin with parameters)")
class OffsetK(Method):
    Params = OffsetParams

    def run(self, ctx, budget, seed):
        check_budget(budget, ctx.n_pairs)
        idx = (self.params.offset + self.params.stride * np.arange(budget)) % ctx.n_pairs
        return MethodOutput(pairs=ctx.real_subset(np.unique(idx)))
'''


def test_parse_space():
    assert parse_space(["lr_txt=[1, 10]", "syn_steps=5"]) == {"lr_txt": [1, 10], "syn_steps": [5]}
    for bad, match in (("lr_txt", "name=\\["), ("lr_txt=[1,", "not valid YAML"), ("=[1]", "parameter name")):
        with pytest.raises(ConfigError, match=match):
            parse_space([bad])
    with pytest.raises(ConfigError, match="twice"):
        parse_space(["a=[1]", "a=[2]"])


def test_the_search_grid_runs_each_combination_on_val_only():
    data = {"name": "g", "results_dir": "out", "budgets": [10, 20], "include_full": True,
            "evaluation": {"split": "test"},
            "methods": ["random", {"name": "offset-k", "params": {"offset": 1, "stride": 3},
                                   "budget_params": {20: {"stride": 2}}}]}
    space = {"offset": [0, 4], "stride": [5]}
    tuned, found = tuning_data(data, "offset-k", 20, space)
    assert tuned["evaluation"]["split"] == "val" and tuned["include_full"] is False and tuned["budgets"] == [20]
    assert tuned["results_dir"] == "out/tune/offset-k-b20"
    assert [m["params"] for m in tuned["methods"]] == [{"offset": 0, "stride": 5}, {"offset": 4, "stride": 5}]
    assert [m["label"] for m in tuned["methods"]] == [t.label for t in found] == ["offset-k-t00", "offset-k-t01"]
    # The budget's own override is the base a trial starts from.
    tuned, _ = tuning_data(data, "offset-k", 20, {"offset": [7]})
    assert tuned["methods"][0]["params"] == {"offset": 7, "stride": 2}
    assert data["evaluation"]["split"] == "test" and len(data["methods"]) == 2  # the config is not modified
    with pytest.raises(ConfigError, match="not a method of the config"):
        tuning_data(data, "herding", 10, space)
    assert len(trials("m", {"a": [1, 2], "b": [3, 4, 5]})) == 6


def test_rank_refuses_a_record_not_made_on_val():
    from bench.grid.record import CellRecord

    found = trials("m", {"a": [1]})
    record = CellRecord(dataset="d", method=found[0].label, per_seed=[{"metrics": {"mean": 3.0}}], eval_split="test")
    with pytest.raises(RuntimeError, match="not evaluated on val"):
        rank([record], found)


def test_tune_command_end_to_end(tmp_path):
    plugin = tmp_path / "offset_plugin.py"
    plugin.write_text(PLUGIN)
    config = tmp_path / "grid.yaml"
    config.write_text(json.dumps({
        "name": "tiny", "results_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache"),
        "datasets": [{"source": "embedded", "embedded": {"n_train_images": 60, "n_val_images": 8,
                                                         "n_test_images": 30, "resolution": 16}}],
        "model": {"image_encoder": {"width": 8, "depth": 2}},
        "evaluation": {"seeds": [0, 1], "split": "test", "train": {"epochs": 2, "batch_size": 10}},
        "methods": ["random", {"name": "offset-k", "params": {"stride": 1}}], "budgets": [10],
        "runner": {"executor": "local"}}))
    out = subprocess.run([sys.executable, str(REPO / "run_bench.py"), "tune", "--config", str(config), "--plugin",
                          str(plugin), "--method", "offset-k", "--budget", "10", "--space", "offset=[0, 30]",
                          "--no-progress"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "evaluated on the val split" in out.stdout and "mean (val)" in out.stdout
    assert "budget_params" in out.stdout
    tune_dir = tmp_path / "results" / "tune" / "offset-k-b10"
    summary = json.loads((tune_dir / "summary.json").read_text())
    assert summary["split"] == "val" and [r["label"] for r in summary["ranked"]] != []
    assert sorted(r["values"]["offset"] for r in summary["ranked"]) == [0, 30]
    means = [r["mean"] for r in summary["ranked"]]
    assert means == sorted(means, reverse=True)
    records = [json.loads(p.read_text()) for p in (tune_dir / "records").glob("*.json")]
    assert len(records) == 2 and {r["eval_split"] for r in records} == {"val"}
    assert not (tmp_path / "results" / "records").exists()  # the benchmark's own records are untouched
