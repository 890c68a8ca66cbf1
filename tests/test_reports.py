"""Reports: pooling of records, the papers' table layout, published numbers, renderers,
plots/grids and the ``table`` command. Synthetic records only: fast, no training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.grid.pictures import save_pair_grid
from bench.reports.plots import plot_recall_vs_budget
from bench.reports.records import RecordError, aggregate, load_records
from bench.reports.tables import (
    BUNDLED_REFERENCE,
    MISSING,
    ReferenceError,
    load_reference,
    mean_table,
    paper_table,
    render,
)

METRICS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10")
DATASET = "flickr30k"


def _metrics(base: float, seed: int) -> dict[str, float]:
    values = {m: base + 0.7 * i + 0.3 * seed for i, m in enumerate(METRICS)}
    values["mean"] = float(np.mean(list(values.values())))
    return values


def _record(method: str, kind: str, budget: int | None, method_seed: int | None, base: float) -> dict:
    per_seed = [{"seed": s, "metrics": _metrics(base + (method_seed or 0), s), "train_seconds": 1.0} for s in range(3)]
    return {
        "status": "ok", "dataset": DATASET, "method": method, "kind": kind, "budget": budget,
        "method_seed": method_seed, "n_pairs": budget or 145000, "eval_seeds": [0, 1, 2], "eval_split": "test",
        "per_seed": per_seed, "summary": {}, "method_cost": {"seconds": 1.5, "peak_rss_mb": 800.0},
        "config_hash": "abc",
    }


def _write(records_dir: Path, name: str, record: dict) -> None:
    records_dir.mkdir(parents=True, exist_ok=True)
    (records_dir / name).write_text(json.dumps(record))


@pytest.fixture()
def results_dir(tmp_path: Path) -> Path:
    rec = tmp_path / "res" / "records"
    _write(rec, "full.json", _record("full", "reference", None, None, 30.0))
    for budget, base in ((100, 1.0), (1000, 5.0)):
        _write(rec, f"random_b{budget}_s0.json", _record("random", "coreset", budget, 0, base))
        _write(rec, f"distill-joint_b{budget}_s0.json", _record("distill-joint", "distillation", budget, 0, base * 4))
    _write(rec, "herding_b100_s0.json", _record("herding", "coreset", 100, 0, 2.0))
    _write(rec, "herding_b100_s1.json", _record("herding", "coreset", 100, 1, 2.0))  # second method seed
    _write(rec, "kcenter_b100_s0.json", _record("kcenter", "coreset", 100, 0, 1.5))  # no budget 1000 -> "–"
    # Ignored: hidden temp files, crash reports, unfinished records.
    (rec / ".random_b100_s0.json.tmp.json").write_text("{not json")
    (rec / "kcenter_b1000_s0.failed.json").write_text("{not json")
    _write(rec, "pending.json", {**_record("kcenter", "coreset", 1000, 0, 9.0), "status": "failed"})
    return tmp_path / "res"


@pytest.fixture()
def agg(results_dir: Path) -> pd.DataFrame:
    return aggregate(load_records(results_dir))


def test_load_skips_hidden_failed_and_unfinished(results_dir: Path) -> None:
    records = load_records(results_dir)
    assert len(records) == 8
    assert [Path(r.path).name for r in records] == sorted(Path(r.path).name for r in records)
    assert not any(r.status != "ok" for r in records)


def test_pooled_mean_std_match_numpy(agg: pd.DataFrame) -> None:
    assert list(agg.columns) == ["dataset", "method", "kind", "budget", "student", "protocol", "split", "metric", "mean",
                                 "std", "n"]
    assert set(agg["student"]) == {"source"} and set(agg["protocol"]) == {"suite"}
    pooled = [_metrics(2.0 + ms, s)["tr@5"] for ms in (0, 1) for s in range(3)]
    row = agg[(agg.method == "herding") & (agg.budget == 100) & (agg.metric == "tr@5")].iloc[0]
    assert row["n"] == 6
    assert row["mean"] == pytest.approx(np.mean(pooled))
    assert row["std"] == pytest.approx(np.std(pooled, ddof=1))
    full = agg[(agg.method == "full") & (agg.metric == "mean")].iloc[0]
    assert full["budget"] == "full" and full["kind"] == "reference" and full["n"] == 3


def test_single_value_has_zero_std() -> None:
    rec = _record("random", "coreset", 100, 0, 1.0)
    rec["per_seed"] = rec["per_seed"][:1]
    assert aggregate([rec])["std"].eq(0.0).all()


def test_duplicate_cell_is_an_error(results_dir: Path) -> None:
    _write(results_dir / "records", "random_copy.json", _record("random", "coreset", 100, 0, 1.0))
    with pytest.raises(RecordError, match="random_copy.json"):
        aggregate(load_records(results_dir))


def test_paper_table_layout(agg: pd.DataFrame) -> None:
    table = paper_table(agg, DATASET)
    assert table.index.names == ["pairs", "metric"]
    assert list(table.index.get_level_values(0).unique()) == [100, 1000]
    assert list(table.loc[100].index) == ["tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "mean", "norm"]
    assert list(table.columns) == ["random", "herding", "kcenter", "distill-joint", "full"]
    assert table.loc[(1000, "tr@1"), "kcenter"] == MISSING
    full_tr1 = table.xs("tr@1", level="metric")["full"]
    assert full_tr1.nunique() == 1 and full_tr1.iloc[0] == "30.3 ± 0.3"
    pooled = [_metrics(2.0 + ms, s)["mean"] for ms in (0, 1) for s in range(3)]
    assert table.loc[(100, "mean"), "herding"] == f"{np.mean(pooled):.1f} ± {np.std(pooled, ddof=1):.1f}"


def test_norm_row_is_the_normalised_mean_recall(agg: pd.DataFrame) -> None:
    """norm = (method - random@B) / (full - random@B) on pooled mean recalls, from the raw numbers."""
    table = paper_table(agg, DATASET)
    means = agg[agg["metric"] == "mean"].set_index(["method", "budget"])["mean"]
    full = means[("full", "full")]
    for budget, methods in ((100, ("herding", "kcenter", "distill-joint")), (1000, ("distill-joint",))):
        random = means[("random", budget)]
        for method in methods:
            expected = (means[(method, budget)] - random) / (full - random)
            assert table.loc[(budget, "norm"), method] == f"{expected:.2f}"
        assert table.loc[(budget, "norm"), "random"] == "0.00" and table.loc[(budget, "norm"), "full"] == "1.00"
    assert table.loc[(1000, "norm"), "kcenter"] == MISSING  # no kcenter record at 1000 pairs
    no_random = paper_table(agg[agg["method"] != "random"], DATASET)
    assert (no_random.xs("norm", level="metric") == MISSING).all().all()
    assert "no random row at that budget" in no_random.attrs["caption"]


def test_reference_columns_have_published_numbers(agg: pd.DataFrame) -> None:
    ref = load_reference("paper")
    assert load_reference(BUNDLED_REFERENCE).equals(ref)
    table = paper_table(agg, DATASET, reference=ref)
    cols = list(table.columns)
    for method in ("random", "herding", "kcenter", "distill-joint", "full"):
        assert cols[cols.index(method) + 1] == f"{method} (paper)"
    assert table.loc[(100, "tr@1"), "herding (paper)"] == "1.1"
    assert table.loc[(100, "tr@1"), "distill-joint (paper)"] == "9.9 ± 0.3"
    assert table.loc[(100, "mean"), "herding (paper)"] == MISSING  # vl-distill gives no mean
    assert set(table.xs("ir@1", level="metric")["full (paper)"]) == {"27.32"}
    assert table.attrs["sources"] == ["vl-distill"]
    assert "Vision-Language Dataset Distillation" in table.attrs["caption"]
    lors = paper_table(agg, DATASET, reference=ref, source="lors")
    assert lors.loc[(100, "tr@1"), "herding (paper)"] == "2.0"
    assert lors.loc[(100, "mean"), "herding (paper)"] == "5.1"
    assert lors.loc[(1000, "tr@1"), "herding (paper)"] == "5.0"  # LoRS stops at 500: vl-distill
    assert lors.attrs["sources"][0] == "lors" and "vl-distill" in lors.attrs["sources"]  # fallback


def test_load_reference_errors(tmp_path: Path) -> None:
    bad = tmp_path / "ref.csv"
    bad.write_text("source,dataset,pairs,method,metric,std\nx,flickr30k,100,random,tr@1,\n")
    with pytest.raises(ReferenceError, match=r"ref\.csv.*value"):
        load_reference(bad)
    with pytest.raises(ReferenceError, match="nope.csv"):
        load_reference(tmp_path / "nope.csv")


def test_render_formats(agg: pd.DataFrame) -> None:
    table = paper_table(agg, DATASET, reference=load_reference("paper"))
    md = render(table, "markdown")
    assert "| pairs" in md and "herding (paper)" in md and "30.3 ± 0.3" in md and MISSING in md
    latex = render(table, "latex")
    assert "\\begin{tabular}" in latex and "\\toprule" in latex and "\\bottomrule" in latex
    assert "$\\pm$" in latex and "tr@1" in latex and "\\caption{" in latex
    assert "±" not in latex and MISSING not in latex
    # Unescaped % only in the header's comment lines and the deliberate line-end comment of \resizebox{...}{%.
    body = "\n".join(line for line in latex.splitlines() if not line.startswith("%")).replace("{%\n", "{\n")
    assert re.search(r"(?<!\\)%", body) is None and "(\\%)" in latex
    csv = render(table, "csv")
    assert csv.splitlines()[0].startswith("pairs,metric,random,random (paper)")
    assert "100,tr@1," in csv
    with pytest.raises(ValueError, match="format"):
        render(table, "html")


def test_mean_table(agg: pd.DataFrame) -> None:
    table = mean_table(agg, DATASET)
    assert list(table.index) == ["random", "herding", "kcenter", "distill-joint", "full"]
    assert list(table.columns) == [100, 1000]
    assert table.loc["kcenter", 1000] == MISSING
    assert table.loc["full", 100] == table.loc["full", 1000]


def test_malformed_record_names_file(tmp_path: Path) -> None:
    rec = tmp_path / "records"
    _write(rec, "good.json", _record("random", "coreset", 100, 0, 1.0))
    (rec / "broken.json").write_text('{"status": "ok", "dataset": ')
    with pytest.raises(RecordError, match="broken.json"):
        load_records(tmp_path)
    (rec / "broken.json").write_text(json.dumps({"status": "ok", "dataset": "x"}))
    with pytest.raises(RecordError, match="broken.json.*method"):
        load_records(tmp_path)


def _assert_png(path: Path) -> None:
    assert path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_plot_recall_vs_budget(agg: pd.DataFrame, tmp_path: Path) -> None:
    out = plot_recall_vs_budget(agg, DATASET, tmp_path / "plot" / "recall.png")
    _assert_png(out)
    with pytest.raises(ValueError, match="coco"):
        plot_recall_vs_budget(agg, "coco", tmp_path / "plot" / "coco.png")


@pytest.mark.parametrize("dtype", ["uint8", "float"])
def test_save_pair_grid(tmp_path: Path, dtype: str) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=gen)
    if dtype == "float":
        images = torch.randn(6, 3, 16, 16, generator=gen)
    captions = [f"a caption number {i} that is long enough to need wrapping onto two lines" for i in range(6)]
    out = save_pair_grid(images, captions, tmp_path / "grid" / "pairs.png", title="selected pairs", n=5, cols=3)
    _assert_png(out)


def _run_cli(argv: list[str]) -> int:
    from bench.commands.cli import main

    return main(["table", *argv])


def test_cli(results_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli([str(results_dir), "--reference", "paper"]) == 0
    assert "herding (paper)" in capsys.readouterr().out
    out, plot = tmp_path / "out" / "table.tex", tmp_path / "out" / "recall.png"
    assert _run_cli([str(results_dir), "--format", "latex", "--output", str(out), "--plot", str(plot)]) == 0
    assert "\\begin{tabular}" in out.read_text() and plot.stat().st_size > 0
    assert _run_cli([str(results_dir), "--dataset", "coco"]) == 2
    assert "coco" in capsys.readouterr().err


def test_cli_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "records").mkdir()
    assert _run_cli([str(tmp_path)]) == 2
    assert "no finished result records" in capsys.readouterr().err
    assert _run_cli([str(tmp_path / "missing")]) == 2


def test_record_schema_round_trip_and_versions(tmp_path: Path) -> None:
    from bench.grid.record import RECORD_VERSION, CellRecord

    legacy = _record("herding", "", 100, 0, 1.0)  # written before the schema: no version, no kind
    del legacy["kind"]
    legacy["some_future_field"] = {"kept": True}
    rec = CellRecord.from_json(legacy, tmp_path / "x.json")
    assert rec.schema_version == 1 and rec.kind == "coreset" and rec.extra == {"some_future_field": {"kept": True}}
    assert rec.to_json()["some_future_field"] == {"kept": True}  # written back unchanged
    fresh = CellRecord(dataset="d", method="m", kind="coreset", per_seed=[{"seed": 0, "metrics": {"mean": 1.0}}])
    assert fresh.schema_version == RECORD_VERSION and CellRecord.from_json(fresh.to_json()) == fresh
    assert fresh.metric_summary("mean") == (1.0, 0.0)


def test_cli_refuses_a_record_without_results(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A record with an empty per_seed used to print nothing and exit 0."""
    empty = {**_record("random", "coreset", 100, 0, 1.0), "per_seed": []}
    _write(results_dir / "records", "empty.json", empty)
    assert _run_cli([str(results_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "empty.json" in err and "'per_seed' is empty" in err


def test_records_of_different_recipes_are_not_mixed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without grid.json (results of an older version), records that say which recipe made
    them must agree within a dataset."""
    rec = tmp_path / "records"
    for name, epochs in (("a.json", 10), ("b.json", 20)):
        record = _record("random" if name == "a.json" else "herding", "coreset", 100, 0, 1.0)
        record.update(dataset_key="k", config={"model": {}, "evaluation": {"train": {"epochs": epochs}}})
        _write(rec, name, record)
    assert _run_cli([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "b.json and" in err and "a.json were made with different recipes" in err


@pytest.mark.parametrize("split", ["val", "test"])
def test_every_table_names_its_split_and_selection_rule(tmp_path: Path, split: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20, item 12: val numbers printed as if they were test numbers. The markdown and
    LaTeX captions and the ``table`` command name the split and the epoch-selection rule."""
    rec = tmp_path / "res" / "records"
    for name, method, kind, budget, base in (("full.json", "full", "reference", None, 30.0),
                                             ("random.json", "random", "coreset", 100, 1.0)):
        _write(rec, name, {**_record(method, kind, budget, None if budget is None else 0, base), "eval_split": split})
    table = paper_table(aggregate(load_records(tmp_path / "res")), DATASET)
    other = {"val": "test", "test": "val"}[split]
    for fmt in ("markdown", "latex"):
        text = render(table, fmt)
        assert f"on the {split} split" in text and f"on the {other} split" not in text
        assert "final epoch" in text
    assert _run_cli([str(tmp_path / "res")]) == 0
    assert f"on the {split} split" in capsys.readouterr().out
