"""End to end through the CLI on a small embedded config: records, determinism, signal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.commands.cli import main

REPO = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, tag: str, capsys) -> tuple[dict, dict, str]:
    out = tmp_path / tag
    overrides = [
        f"results_dir={out}", f"cache_dir={tmp_path / 'cache'}",
        "datasets=[{source: embedded, embedded: {n_train_images: 400, n_val_images: 20, n_test_images: 200}}]",
        "model={image_encoder: {name: convnet, width: 16, depth: 3}, text_head: residual, text_dropout: 0.1}",
        "methods=[random]", "runner.executor=local", "runner.cpus_per_task=2",
        "evaluation.seeds=[0, 1]", "evaluation.full_train.epochs=6",
        "evaluation.train.epochs=20", "budgets=[20]",
    ]
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    printed = capsys.readouterr().out
    full = json.loads((out / "records" / "embedded__full.json").read_text())
    rnd = json.loads((out / "records" / "embedded__random__b20__s0.json").read_text())
    return full, rnd, printed


@pytest.mark.timeout(300)
def test_quickstart_cli_end_to_end(tmp_path, capsys):
    full, rnd, printed = _run(tmp_path, "a", capsys)
    assert "full" in printed and "random" in printed and "TR@1" in printed
    assert full["n_pairs"] == 2000 and rnd["n_pairs"] == 20 and len(set(rnd["source_indices"])) == 20
    assert [r["seed"] for r in full["per_seed"]] == [0, 1] and full["eval_seeds"] == [0, 1]
    assert full["config_hash"] and full["config"]["budgets"] == [20]
    # Chance for the mean of the six recalls here is about 2.7%; full data must clear it and
    # the 20-pair model by a wide margin.
    assert full["summary"]["mean"]["mean"] > 2 * rnd["summary"]["mean"]["mean"]
    assert full["summary"]["mean"]["mean"] > 8.0
    # Same config, same seeds: identical numbers (the caches are warm the second time).
    full2, rnd2, _ = _run(tmp_path, "b", capsys)
    assert [r["metrics"] for r in full2["per_seed"]] == [r["metrics"] for r in full["per_seed"]]
    assert rnd2["source_indices"] == rnd["source_indices"]
    assert not list((tmp_path / "a" / "records").glob(".*tmp"))


def test_budget_larger_than_dataset_is_clear(tmp_path):
    from bench.grid.runner import GridRun
    from tests.grid_helpers import tiny_grid

    cfg = tiny_grid(tmp_path, budgets=[999])
    with pytest.raises(ValueError, match="budget 999 is larger than the training set of embedded \\(300 pairs\\)"):
        GridRun(cfg, progress=False).run()
    assert not (tmp_path / "records").exists()


def test_config_typo_exits_with_message(tmp_path, capsys):
    assert main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--set", "evaluation.sedes=[1]"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --set 'evaluation.sedes=[1]': unknown config key 'evaluation.sedes'; did you mean "
                   "'seeds', 'students'? (valid keys: eval_every, full_train, protocol, seeds, split, students, train)\n")


def test_karpathy_dataset_runs_through_the_pipeline(tmp_path):
    """A Flickr30K-shaped dataset from JSON + image files, configured as a user would."""
    from bench.core.config import from_dict
    from bench.grid.runner import GridRun
    from bench.grid.spec import GridConfig
    from bench.reports.records import load_records
    from tests.test_karpathy import make_dataset

    spec = make_dataset(tmp_path, resolution=8)
    cfg = from_dict(GridConfig, {
        "name": "tiny", "results_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
        "budgets": [2],
        "methods": ["random"], "runner": {"executor": "local"},
        "datasets": [{"source": "karpathy", "karpathy": {
            "name": "tiny", "train_json": str(spec.train_json), "val_json": str(spec.val_json),
            "test_json": str(spec.test_json), "image_root": str(spec.image_root), "resolution": 8}}],
        "model": {"image_encoder": {"width": 4, "depth": 1}},
        "evaluation": {"seeds": [0], "train": {"epochs": 2, "batch_size": 2}, "full_train": {"epochs": 2}},
    })
    GridRun(cfg, progress=False).run()
    records = load_records(tmp_path / "out")
    assert [r.method for r in records] == ["full", "random"]
    assert records[0].n_pairs == 5 and records[0].dataset == "tiny"
    assert set(records[0].summary) == {"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "mean"}
    # Two test images: every K >= 2 retrieves everything.
    assert records[0].summary["tr@5"]["mean"] == 100.0 and records[0].summary["ir@5"]["mean"] == 100.0
    assert (tmp_path / "out" / "records" / "tiny__random__b2__s0.json").is_file()
