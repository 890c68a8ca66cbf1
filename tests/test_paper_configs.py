"""configs/flickr30k.yaml and configs/coco.yaml: the published recipe, loadable without data,
GPU or timm, and keyed so that `table --reference paper` puts the published numbers beside ours."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.grid.spec import GridConfig, load_grid, plan_cells, resolve_cell
from bench.reports.records import aggregate, load_records
from bench.reports.tables import load_reference, paper_table

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"flickr30k": REPO / "configs" / "flickr30k.yaml", "coco": REPO / "configs" / "coco.yaml"}
METRICS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10")


@pytest.fixture(params=sorted(CONFIGS), ids=str)
def paper_grid(request, tmp_path, monkeypatch) -> tuple[str, GridConfig]:
    # Loaded from an empty directory: none of the (relative) data or model paths exists, so a
    # load that opened, stat-ed or validated any of them would fail here.
    monkeypatch.chdir(tmp_path)
    return request.param, load_grid(CONFIGS[request.param])


def test_loads_without_data_or_models(paper_grid):
    name, grid = paper_grid
    (data,) = grid.datasets
    assert data.source == "karpathy" and data.name == name
    paths = [data.karpathy.train_json, data.karpathy.val_json, data.karpathy.test_json, data.karpathy.image_root,
             data.text_encoder.path, grid.model.image_encoder.path]
    assert all(p and not Path(p).exists() for p in paths)
    assert Path(data.karpathy.train_json).name == {"flickr30k": "flickr30k_train.json",
                                                   "coco": "coco_karpathy_train.json"}[name]
    # Relative paths mean the working directory: the driver makes them absolute (Ray workers run elsewhere).
    assert grid.results_dir == str(Path.cwd() / "results" / name)
    assert data.karpathy.image_root == str(Path.cwd() / "data" / name)


def test_recipe_matches_the_paper(paper_grid):
    _, grid = paper_grid
    (data,) = grid.datasets
    assert data.resolution == 224
    enc = grid.model.image_encoder
    assert (enc.name, enc.timm_name, enc.pretrained) == ("timm", "nfnet_l0", True)
    assert grid.model.text_head == "residual" and grid.model.embed_dim is None
    assert Path(data.text_encoder.path).name == "bert-base-uncased"
    assert data.text_encoder.pooling == "cls" and data.text_encoder.normalize is False
    assert (grid.experts.n_experts, grid.experts.epochs) == (20, 10)
    assert grid.budgets == (100, 200, 500, 1000)
    assert len(grid.evaluation.seeds) == 5 and grid.evaluation.split == "test"
    assert grid.include_full
    assert [m.key for m in grid.methods] == ["random", "herding", "kcenter", "forgetting", "distill-joint", "lors",
                                             "repblend", "mdm", "ptm-st", "covmatch"]
    distill = [c for c in plan_cells(grid) if c.method == "distill-joint"]
    assert sorted(c.budget for c in distill) == [100, 200, 500, 1000]
    for cell in distill:  # the resolved params of every budget, overrides included
        p = resolve_cell(grid, cell).params
        # VL-distill README command and distill.py defaults (configs/*.yaml cite them).
        assert (p.syn_steps, p.expert_epochs, p.max_start_epoch) == (8, 1, 2)
        assert (p.lr_img, p.lr_txt, p.lr_lr, p.syn_lr_init) == (1000, 1000, 1e-2, 0.1)
        assert (p.batch_syn, p.momentum, p.iterations) == (100, 0.5, 2000)
        assert p.inner_logit_scale == pytest.approx(1 / 0.07) and p.memory == "recompute"
        assert p.max_start_epoch + p.expert_epochs <= grid.experts.epochs


# The LoRS authors' published commands (github.com/silicx/LoRS_Distill at 0ad0743,
# sh/distill_<dataset>_lors_<budget>.sh): (max_start_epoch, lr_img = lr_txt, lr_sim, rank, alpha, batch).
LORS_COMMANDS = {
    "flickr30k": {100: (2, 100, 10.0, 10, 3.0, 20), 200: (2, 1000, 10.0, 5, 1.0, 20), 500: (3, 1000, 100.0, 20, 0.01, 40)},
    "coco": {100: (2, 1000, 5.0, 10, 1.0, 20), 200: (2, 1000, 50.0, 20, 1.0, 20), 500: (2, 5000, 500.0, 40, 1.0, 30)},
}


def test_lors_recipe_matches_the_authors_commands(paper_grid):
    name, grid = paper_grid
    for cell in (c for c in plan_cells(grid) if c.method == "lors"):
        p = resolve_cell(grid, cell).params
        expected = LORS_COMMANDS[name].get(cell.budget, LORS_COMMANDS[name][100])  # 1000: the 100-pair command
        assert (p.max_start_epoch, p.lr_img, p.lr_sim, p.rank, p.alpha, p.batch_syn) == expected, cell.budget
        assert p.lr_txt == p.lr_img and p.loss == "wbce" and (p.syn_steps, p.expert_epochs, p.lr_lr) == (8, 1, 1e-2)
        assert p.merge_sides == (name == "coco")
        scale = 10.0 if (name, cell.budget) == ("coco", 500) else 1 / 0.07  # coco 500: --temperature 0.1
        assert p.inner_logit_scale == pytest.approx(scale)


# The RepBlend authors' published commands (github.com/zhangxin-xd/RepBlend at 861c284,
# scripts/distill_<dataset>_repblend.sh): (max_start_epoch, lr_img = lr_txt, lr_sim, rank, alpha, batch,
# inner logit scale = 1 / --temperature).
REPBLEND_COMMANDS = {
    "flickr30k": {100: (2, 100, 10.0, 10, 3.0, 20, 1 / 0.07), 200: (2, 1000, 10.0, 5, 1.0, 20, 1 / 0.07),
                  500: (3, 1000, 100.0, 20, 0.01, 20, 1 / 0.07)},
    "coco": {100: (2, 1000, 5.0, 10, 1.0, 20, 1 / 0.07), 200: (2, 1000, 50.0, 20, 1.0, 20, 1 / 0.07),
             500: (2, 5000, 500.0, 40, 1.0, 20, 10.0)},
}


def test_repblend_recipe_matches_the_authors_commands(paper_grid):
    name, grid = paper_grid
    cells = [c for c in plan_cells(grid) if c.method == "repblend"]
    assert sorted(c.budget for c in cells) == [100, 200, 500, 1000]
    for cell in cells:
        p = resolve_cell(grid, cell).params
        mse, lr, lr_sim, rank, alpha, batch, scale = REPBLEND_COMMANDS[name].get(cell.budget,
                                                                             REPBLEND_COMMANDS[name][100])
        assert (p.max_start_epoch, p.lr_img, p.lr_txt, p.lr_sim, p.rank, p.alpha, p.batch_syn) == \
            (mse, lr, lr, lr_sim, rank, alpha, batch), cell.budget
        assert p.inner_logit_scale == pytest.approx(scale)
        assert (p.syn_steps, p.expert_epochs, p.lr_lr, p.syn_lr_init, p.momentum) == (8, 1, 1e-2, 0.1, 0.5)
        assert (p.iterations, p.loss, p.blend_alpha, p.learn_similarity) == (3000, "wbce", 1.0, True)
        assert p.merge_sides == (name == "coco") and p.memory == "recompute"
        assert p.max_start_epoch + p.expert_epochs <= grid.experts.epochs


def test_mdm_recipe_matches_the_authors_command(paper_grid):
    """andyj1/mdm at 93e6efd, sh/distill.sh (the only published command) and distill_mdm.py's
    defaults; the same at every budget and on both datasets."""
    _, grid = paper_grid
    cells = [c for c in plan_cells(grid) if c.method == "mdm"]
    assert sorted(c.budget for c in cells) == [100, 200, 500, 1000]
    for cell in cells:
        p = resolve_cell(grid, cell).params
        assert (p.iterations, p.batch_syn, p.batch_real, p.lr_img, p.lr_txt) == (3000, 64, 256, 1000, 1000)
        assert (p.momentum, p.grad_clip, p.w_nce, p.w_agree, p.w_disc) == (0.5, 1.0, 1.0, 0.8, 0.8)
        assert (p.sigma_agree, p.sigma_disc, p.merge_alpha, p.min_epoch, p.max_epoch) == (0.5, 0.5, 0.5, 1, 10)
        assert p.logit_scale == pytest.approx(1 / 0.07) and p.same_expert is False
        assert p.max_epoch <= grid.experts.epochs


# The PTM-ST authors' commands (github.com/Previsior/PTM-ST at 8d01da8, sh/distill.sh): per budget
# (phase fractions of the budget, start windows, shortcut segment ends, mini batch); lr_sim per dataset.
PTM_ST_COMMANDS = {
    100: ((1.0,), (0,), (2,), (5,)),
    200: ((0.5, 0.5), (0, 1), (2, 3), (5, 7)),
    500: ((0.4, 0.6), (0, 1), (2, 3), (5, 7)),
}


def test_ptm_st_recipe_matches_the_authors_commands(paper_grid):
    name, grid = paper_grid
    cells = [c for c in plan_cells(grid) if c.method == "ptm-st"]
    assert sorted(c.budget for c in cells) == [100, 200, 500, 1000]
    for cell in cells:
        p = resolve_cell(grid, cell).params
        phases = PTM_ST_COMMANDS.get(cell.budget, PTM_ST_COMMANDS[100])  # 1000: the 100-pair command
        assert (p.phase_fractions, p.phase_min_start, p.phase_max_start, p.shortcut_ends) == phases, cell.budget
        assert p.batch_syn == (40 if (name, cell.budget) == ("flickr30k", 500) else 20)
        assert p.lr_sim == {"flickr30k": 10.0, "coco": 50.0}[name]
        assert (p.lr_img, p.lr_txt, p.lr_lr, p.syn_lr_init, p.momentum) == (1000, 1000, 1e-2, 0.1, 0.5)
        assert (p.syn_steps, p.expert_epochs, p.iterations, p.ema_decay, p.loss) == (8, 1, 2000, 0.99, "wbce")
        assert p.shortcut and p.inner_logit_scale == pytest.approx(1 / 0.07) and not p.merge_sides
        assert p.last_epoch + 1 <= grid.experts.epochs


def test_loading_imports_neither_timm_nor_torchvision():
    """timm (and the torchvision it needs) is an optional GPU extra: a config that names it
    must still load everywhere. Run in a fresh interpreter with both imports blocked."""
    code = f"""
import importlib.abc, sys
tried = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('timm', 'torchvision'):
            tried.append(name)
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from bench.grid.spec import load_grid
for path in {[str(p) for p in CONFIGS.values()]!r}:
    load_grid(path)
print('tried', tried)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("tried []"), out.stdout


def test_cells_have_published_counterparts(paper_grid):
    """Dataset names, method keys and budgets are the reference CSV's, so every cell of the
    grid finds its published numbers (`full` via the alias full-data, published for Flickr30K)."""
    name, grid = paper_grid
    ref = load_reference("paper")
    ref = ref[ref["dataset"] == name]
    published = {source: set(zip(rows["method"], rows["pairs"], rows["metric"])) for source, rows in ref.groupby("source")}
    for cell in plan_cells(grid):
        if cell.method == "full":
            if name == "flickr30k":
                assert all(("full-data", "full", m) in published["vl-distill"] for m in METRICS)
            continue
        if cell.method in ("lors", "repblend"):  # published at 100, 200 and 500 pairs
            found = all((cell.method, str(cell.budget), m) in published[cell.method] for m in METRICS)
            assert found == (cell.budget != 1000), cell.id
            continue
        if cell.method == "mdm":  # 100, 200 and 500 pairs; the six recalls only for Flickr30K 100 and 500
            assert ((cell.method, str(cell.budget), "mean") in published["mdm"]) == (cell.budget != 1000), cell.id
            recalls = all((cell.method, str(cell.budget), m) in published["mdm"] for m in METRICS)
            assert recalls == (name == "flickr30k" and cell.budget in (100, 500)), cell.id
            continue
        if cell.method == "ptm-st":  # its tables could not be read: no published numbers
            assert not any(cell.method in {m for m, _, _ in rows} for rows in published.values())
            continue
        if cell.method == "covmatch":  # only the Flickr30K mean at 500 pairs
            found = (cell.method, str(cell.budget), "mean") in published.get("covmatch", set())
            assert found == (name == "flickr30k" and cell.budget == 500), cell.id
            continue
        assert all((cell.method, str(cell.budget), m) in published["vl-distill"] for m in METRICS), cell.id


def _metrics(base: float, seed: int) -> dict[str, float]:
    values = {m: base + 0.5 * i + 0.2 * seed for i, m in enumerate(METRICS)}
    values["mean"] = float(np.mean(list(values.values())))
    return values


def _write_record(records: Path, grid: GridConfig, cell, kind: str, base: float) -> None:
    """A finished record as the runner writes it (the fields the reports read)."""
    seeds = list(grid.evaluation.seeds)
    record = {
        "status": "ok", "cell": cell.id, "dataset": cell.dataset, "method": cell.method, "kind": kind,
        "budget": cell.budget, "method_seed": cell.method_seed, "eval_seeds": seeds, "eval_split": "test",
        "per_seed": [{"seed": s, "metrics": _metrics(base, s)} for s in seeds],
    }
    records.mkdir(parents=True, exist_ok=True)
    (records / f"{cell.id}.json").write_text(json.dumps(record))


def test_table_reference_puts_published_numbers_beside_ours(tmp_path, capsys):
    grid = load_grid(CONFIGS["flickr30k"])
    results = tmp_path / "results" / "flickr30k"
    kinds = {"full": "reference", "random": "coreset", "distill-joint": "distillation", "lors": "distillation",
             "repblend": "distillation", "mdm": "distillation"}
    bases = {"full": 30.0, "random": 1.0, "distill-joint": 7.0, "lors": 9.0, "repblend": 10.0, "mdm": 8.0}
    cells = [c for c in plan_cells(grid) if c.method in kinds and c.budget in (None, 100)]
    assert {c.method for c in cells} == set(kinds)
    for cell in cells:
        _write_record(results / "records", grid, cell, kinds[cell.method], bases[cell.method])

    table = paper_table(aggregate(load_records(results)), "flickr30k", reference=load_reference("paper"))
    ours = [_metrics(7.0, s)["tr@1"] for s in grid.evaluation.seeds]
    ours_text = f"{np.mean(ours):.1f} \u00b1 {np.std(ours, ddof=1):.1f}"
    assert table.loc[(100, "tr@1"), "distill-joint"] == ours_text
    assert table.loc[(100, "tr@1"), "distill-joint (paper)"] == "9.9 \u00b1 0.3"  # Wu et al., Flickr30K, 100 pairs
    assert table.loc[(100, "ir@1"), "random (paper)"] == "1.0"
    assert table.loc[(100, "ir@1"), "full (paper)"] == "27.32"
    # Our lors rows beside LoRS's published ones (ICML 2024, Table 2: Flickr30K, 100 pairs).
    assert table.loc[(100, "tr@1"), "lors"] == f"{np.mean([_metrics(9.0, s)['tr@1'] for s in grid.evaluation.seeds]):.1f} \u00b1 0.3"
    assert table.loc[(100, "tr@1"), "lors (paper)"].startswith("11.8")
    assert table.loc[(100, "mean"), "lors (paper)"].startswith("27.4")
    # RepBlend (NeurIPS 2025) and MDM (CVPR 2026), Flickr30K, 100 pairs, as their repositories show them.
    assert table.loc[(100, "tr@1"), "repblend (paper)"] == "16.2"
    assert table.loc[(100, "mean"), "repblend (paper)"] == "33.6"
    assert table.loc[(100, "ir@1"), "mdm (paper)"] == "8.1" and table.loc[(100, "mean"), "mdm (paper)"] == "26.4"
    assert {"repblend", "mdm"} <= set(table.attrs["sources"])
    assert "Representations Blending" in table.attrs["caption"] and "Distribution Matching" in table.attrs["caption"]

    # The same through the command line, as the README shows it.
    from bench.commands.cli import main

    assert main(["table", str(results), "--reference", "paper"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "| tr@1 " in line]
    assert len(rows) == 1 and ours_text in rows[0] and "9.9 \u00b1 0.3" in rows[0]
