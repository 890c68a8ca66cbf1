"""Sets from anywhere: export a grid's sets as bundles, read them (and the authors' files) back
with ``from-file``, and refuse a file that does not fit the grid in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from bench.commands.cli import main
from bench.core.config import ConfigError
from bench.data.pairs import normalize_images
from bench.grid.cell import prepared
from bench.grid.runner import GridRun
from bench.grid.spec import Cell, build_grid, resolve_cell
from bench.registry import get_method
from methods.from_file import CLIP_MEAN, CLIP_STD, load_set
from tests.grid_helpers import TINY_EXPERTS, records, tiny_grid

pytestmark = pytest.mark.usefixtures("one_thread")

LORS = {"iterations": 2, "syn_steps": 2, "batch_syn": 5, "checkpoint_every": 0, "rank": 3}


def grid_data(root: Path, methods: list, **extra) -> dict:
    """The raw config of the tiny grid (as a YAML file would give it), results under ``root``."""
    data = {
        "name": "tiny", "results_dir": str(root / "results"), "cache_dir": str(root.parent / "cache"),
        "datasets": [{"source": "embedded", "embedded": {
            "n_train_images": 60, "n_val_images": 4, "n_test_images": 30, "resolution": 16}}],
        "model": {"image_encoder": {"width": 8, "depth": 2}},
        "evaluation": {"seeds": [0, 1], "train": {"epochs": 3, "batch_size": 10},
                       "full_train": {"epochs": 1, "batch_size": 64}},
        "proxy": {"epochs": 1, "batch_size": 64}, "experts": TINY_EXPERTS,
        "methods": methods, "budgets": [10, 20], "method_seeds": [0], "include_full": False,
        "runner": {"executor": "local", "max_retries": 0},
    }
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A tiny grid with a coreset (uint8 pixels, real indices) and LoRS (float images, soft
    targets, learned step sizes), run once, and its export."""
    root = tmp_path_factory.mktemp("sets") / "original"
    grid = build_grid(grid_data(root, ["random", {"name": "lors", "params": LORS}], include_full=True))
    run = GridRun(grid, progress=False).run()
    assert not run.failed and len(run.done) == 5
    out = root.parent / "exported"
    assert main(["export", str(root / "results"), str(out)]) == 0
    return root, grid, out


def test_export_writes_a_bundle_and_card_per_finished_cell(original):
    root, grid, out = original
    recs = records(root / "results")
    cells = sorted(k for k in recs if not k.endswith("__full"))
    assert sorted(p.stem for p in out.glob("*.safetensors")) == cells  # the full reference has no set
    card = json.loads((out / "embedded__lors__b10__s0.json").read_text())
    rec = recs["embedded__lors__b10__s0"]
    assert card["dataset"]["key"] == rec["dataset_key"] and card["config_hash"] == rec["config_hash"]
    assert card["budget"] == 10 and card["method"]["name"] == "lors" and card["method"]["params"] == rec["method_params"]
    assert card["text_encoder"]["dim"] == prepared(grid, "embedded").text_dim
    assert card["soft_targets"] == {"loss": "wbce"} and card["learned_lrs"] == rec["learned_lrs"]
    headline = card["numbers"][0]
    assert (headline["split"], headline["protocol"], headline["selection"]) == ("test", "suite", "final")
    assert headline["per_seed"] == rec["per_seed"]
    assert card["suite"]["version"] and card["bundle"]["tensors"] == "embedded__lors__b10__s0.safetensors"


def test_from_file_reads_the_exported_sets_back_with_the_same_numbers(original):
    root, grid, out = original
    entries = yaml.safe_load((out / "embedded.methods.yaml").read_text())
    assert {e["label"] for e in entries} == {"random", "lors"}  # one method seed: the names themselves
    again = build_grid(grid_data(root.parent / "again", entries))
    run = GridRun(again, progress=False).run()
    assert not run.failed and len(run.done) == 4
    first, second = records(root / "results"), records(root.parent / "again" / "results")
    for method in ("random", "lors"):
        for budget in (10, 20):
            a = first[f"embedded__{method}__b{budget}__s0"]
            b = second[f"embedded__{method}__b{budget}__s0"]
            assert [s["metrics"] for s in b["per_seed"]] == [s["metrics"] for s in a["per_seed"]], (method, budget)
            assert b["learned_lrs"] == a["learned_lrs"] and b["method_name"] == "from-file"
            assert b["source_indices"] == a["source_indices"]  # same dataset key: the real pairs are kept
    assert first["embedded__lors__b10__s0"]["learned_lrs"] is not None


def test_entries_of_a_method_with_several_seeds_name_the_seed(tmp_path):
    """Two method seeds of one method would collide under its name: each entry says its seed,
    while a method with one seed keeps its name (the table's random row and norm need it)."""
    from types import SimpleNamespace

    from bench.reports.export import from_file_entries

    def bundle(method, seed, budget):
        record = SimpleNamespace(dataset="embedded", method=method, method_seed=seed, budget=budget)
        return record, tmp_path / f"{method}-{seed}-{budget}.safetensors"

    entries = from_file_entries([bundle("mdm", 0, 10), bundle("mdm", 1, 10), bundle("mdm", 1, 20),
                                 bundle("random", 0, 10)])["embedded"]
    by_label = {e["label"]: e for e in entries}
    assert set(by_label) == {"mdm.s0", "mdm.s1", "random"}
    assert by_label["mdm.s1"]["budgets"] == [10, 20]
    assert by_label["mdm.s1"]["budget_params"] == {20: {"path": str((tmp_path / "mdm-1-20.safetensors").resolve())}}


def test_the_cell_hash_follows_the_file_content(original, tmp_path):
    _, _, out = original
    path = tmp_path / "set.safetensors"
    path.write_bytes((out / "embedded__random__b10__s0.safetensors").read_bytes())
    grid = build_grid(grid_data(tmp_path, [{"name": "from-file", "params": {"path": str(path)}}], budgets=[10]))
    cell = Cell("embedded", "from-file", 10, 0)
    before = resolve_cell(grid, cell).hash
    path.write_bytes((out / "embedded__lors__b10__s0.safetensors").read_bytes())  # same path, other set
    assert resolve_cell(grid, cell).hash != before


def test_a_relative_path_means_the_working_directory(original, tmp_path, monkeypatch):
    _, _, out = original
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "s.safetensors").write_bytes((out / "embedded__random__b10__s0.safetensors").read_bytes())
    monkeypatch.chdir(tmp_path)
    grid = build_grid(grid_data(tmp_path, [{"name": "from-file", "params": {"path": "sub/s.safetensors"}}],
                                budgets=[10]))
    assert grid.methods[0].params["path"] == str(tmp_path / "sub" / "s.safetensors")


def test_from_file_is_listed(capsys):
    assert main(["methods"]) == 0
    assert "from-file" in capsys.readouterr().out
    assert get_method("from-file").default_search == {}


# ----------------------------------------------------------------------------- the authors' files

def pixels(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def clip_normalised(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as the authors' pipelines feed them (ToTensor, then Normalize with CLIP's statistics)."""
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def lors_file(path: Path, n: int, width: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A file as LoRS's distill_tesla_lors.py:234-241 (and RepBlend's distill_repblend.py:265-272)
    writes it: the dict of image, text, similarity_params [a, l, r], similarity_mat, syn_lr_img,
    syn_lr_txt (S = diag(a) + l r^T alpha / rank, their LowRankSimilarityGenerator)."""
    gen = torch.Generator().manual_seed(n)
    raw, text = pixels(n, size, n), torch.randn(n, width, generator=gen)
    a, left, right = torch.ones(n), torch.randn(n, 2, generator=gen), 0.1 * torch.randn(n, 2, generator=gen)
    sim = torch.diag(a) + left @ right.t() * 3.0 / 2
    torch.save({"image": clip_normalised(raw), "text": text, "similarity_params": [a, left, right],
                "similarity_mat": sim, "syn_lr_img": torch.tensor(0.05), "syn_lr_txt": torch.tensor(0.07)}, path)
    return raw, sim


def vl_distill_files(folder: Path, n: int, width: int, size: int = 16) -> torch.Tensor:
    """The seed paper's pair of tensors, distill.py:292-293 (images_<it>.pt, labels_<it>.pt)."""
    raw = pixels(n, size, 7)
    torch.save(clip_normalised(raw), folder / "images_200.pt")
    torch.save(torch.randn(n, width, generator=torch.Generator().manual_seed(8)), folder / "labels_200.pt")
    return raw


def test_the_authors_files_load_in_the_suite_space_and_evaluate(original, tmp_path):
    _, grid, _ = original
    width = prepared(grid, "embedded").text_dim
    raw_lors, sim = lors_file(tmp_path / "distilled_1000.pt", 10, width)
    raw_rep, _ = lors_file(tmp_path / "repblend_1000.pt", 10, width)
    raw_vl = vl_distill_files(tmp_path, 10, width)
    methods = [
        {"name": "from-file", "label": "lors-file", "params": {"path": str(tmp_path / "distilled_1000.pt"), "format": "lors"}},
        {"name": "from-file", "label": "repblend-file",
         "params": {"path": str(tmp_path / "repblend_1000.pt"), "format": "repblend", "soft_target_loss": "infonce"}},
        {"name": "from-file", "label": "vl-file", "params": {"path": str(tmp_path / "images_200.pt"), "format": "vl-distill"}},
    ]
    run_grid = build_grid(grid_data(tmp_path, methods, budgets=[10]))
    for spec, raw in zip(run_grid.methods, (raw_lors, raw_rep, raw_vl)):
        loaded = load_set(resolve_cell(run_grid, Cell("embedded", spec.key, 10, 0)).params)
        # the same pixels, in the suite's normalisation
        torch.testing.assert_close(loaded.pairs.images, normalize_images(raw), rtol=0, atol=1e-5)
    lors = load_set(resolve_cell(run_grid, Cell("embedded", "lors-file", 10, 0)).params)
    assert torch.equal(lors.pairs.soft_targets.matrix, sim) and lors.pairs.soft_targets.loss == "wbce"
    assert lors.learned_lrs == pytest.approx({"image": 0.05, "text": 0.07})
    run = GridRun(run_grid, progress=False).run()
    assert not run.failed and len(run.done) == 3
    recs = records(tmp_path / "results")
    assert recs["embedded__lors-file__b10__s0"]["learned_lrs"] == pytest.approx({"image": 0.05, "text": 0.07})
    assert recs["embedded__vl-file__b10__s0"]["learned_lrs"] is None
    assert all(len(r["per_seed"]) == 2 for r in recs.values())


# ----------------------------------------------------------------------------- what does not fit

def one_line_error(tmp_path: Path, params: dict, capsys, budgets=(10,)) -> str:
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(grid_data(tmp_path, [{"name": "from-file", "params": params}],
                                               budgets=list(budgets))))
    assert main(["--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "methods[0] (from-file)" in err, err
    assert not (tmp_path / "results" / "records").exists() or not any((tmp_path / "results" / "records").iterdir())
    return err


def test_a_missing_file_or_unknown_format_is_one_line(tmp_path, capsys):
    err = one_line_error(tmp_path, {"path": str(tmp_path / "nope.safetensors")}, capsys)
    assert "nope.safetensors: no such file" in err
    (tmp_path / "x.pt").write_bytes(b"not torch")
    err = one_line_error(tmp_path, {"path": str(tmp_path / "x.pt"), "format": "tesla"}, capsys)
    assert "format" in err and "tesla" in err
    err = one_line_error(tmp_path, {"path": str(tmp_path / "x.pt"), "format": "lors"}, capsys)
    assert "not a torch file" in err
    torch.save({"image": torch.zeros(2, 3, 16, 16)}, tmp_path / "y.pt")
    err = one_line_error(tmp_path, {"path": str(tmp_path / "y.pt"), "format": "lors"}, capsys)
    assert "no 'text' entry" in err
    err = one_line_error(tmp_path, {"path": str(tmp_path / "y.pt")}, capsys)  # a torch file is no bundle
    assert "not a safetensors file" in err


def test_a_set_that_does_not_fit_the_grid_is_one_line(original, tmp_path, capsys):
    _, grid, _ = original
    width = prepared(grid, "embedded").text_dim
    lors_file(tmp_path / "wide.pt", 10, width + 1)
    err = one_line_error(tmp_path, {"path": str(tmp_path / "wide.pt"), "format": "lors"}, capsys)
    assert f"text vectors of width {width + 1}" in err and f"gives {width}" in err
    lors_file(tmp_path / "big.pt", 10, width, size=32)
    err = one_line_error(tmp_path, {"path": str(tmp_path / "big.pt"), "format": "lors"}, capsys)
    assert "32x32 px images" in err and "16x16" in err
    lors_file(tmp_path / "small.pt", 5, width)
    err = one_line_error(tmp_path, {"path": str(tmp_path / "small.pt"), "format": "lors"}, capsys)
    assert "holds 5 pairs" in err and "budget is 10" in err


def test_a_text_path_outside_vl_distill_is_refused():
    with pytest.raises(ConfigError, match="text_path"):
        build_grid(grid_data(Path("/tmp/unused"), [{"name": "from-file", "params": {
            "path": "x.pt", "format": "lors", "text_path": "y.pt"}}]))


def test_export_of_a_missing_directory_or_into_a_file_is_one_line(original, tmp_path, capsys):
    root, _, _ = original
    assert main(["export", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    assert main(["export", str(root / "results"), str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a file, not a directory" in err


def test_a_bundle_is_named_by_its_tensors_file_its_card_or_their_stem(original):
    from bench.data.set_bundle import read_bundle

    _, _, out = original
    stem = out / "embedded__lors__b10__s0"
    sets = [read_bundle(p) for p in (stem, stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors"))]
    for s in sets[1:]:
        assert torch.equal(s.pairs.images, sets[0].pairs.images) and s.learned_lrs == sets[0].learned_lrs
    assert sets[0].card["cell_id"] == stem.name and sets[0].pairs.soft_targets.loss == "wbce"
