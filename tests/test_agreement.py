"""Rank agreement with the published results (bench.reports.agreement) and its place in the
``table`` command. Synthetic records only: fast, no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from bench.commands.cli import main
from bench.reports.agreement import kendall_tau_b, published_means, rank_agreement, reference_as
from bench.reports.records import aggregate
from bench.reports.tables import load_reference

METRICS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10")


@pytest.mark.parametrize("seed", range(8))
def test_tau_b_equals_scipy_with_and_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    x = rng.integers(0, 4, n).astype(float) if seed % 2 else rng.standard_normal(n)  # odd seeds: many ties
    y = rng.integers(0, 4, n).astype(float) if seed % 3 == 0 else rng.standard_normal(n)
    expected = kendalltau(x, y).statistic
    ours = kendall_tau_b(list(x), list(y))
    if np.isnan(expected):
        assert ours is None
    else:
        assert ours == pytest.approx(expected, abs=1e-12)


def test_tau_b_extremes_and_undefined() -> None:
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert kendall_tau_b([1.0], [2.0]) is None
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None  # one side all ties
    with pytest.raises(ValueError):
        kendall_tau_b([1, 2], [1])


def _ref(rows: list[tuple[str, str, str, str, str, float]]) -> pd.DataFrame:
    ref = pd.DataFrame(rows, columns=["source", "dataset", "pairs", "method", "metric", "value"])
    ref["std"] = np.nan
    return ref


def test_published_means_one_source_per_method() -> None:
    rows = [("a", "d", "100", "random", m, 1.0) for m in METRICS]  # a: six recalls, mean 1
    rows += [("b", "d", "100", "random", "mean", 7.0), ("b", "d", "100", "lors", "mean", 9.0)]
    rows += [("a", "d", "100", "herding", "tr@1", 3.0)]  # incomplete: no mean for herding from a
    rows += [("a", "other", "100", "kcenter", "mean", 5.0)]
    ref = _ref(rows)
    assert published_means(ref, "d", "100", "a") == {"random": (1.0, "a"), "lors": (9.0, "b")}
    assert published_means(ref, "d", "100", "b") == {"random": (7.0, "b"), "lors": (9.0, "b")}
    assert published_means(ref, "d", "200", "a") == {}


def _record(method: str, kind: str, budget: int | None, base: float) -> dict:
    per_seed = [{"seed": s, "metrics": {**{m: base + s for m in METRICS}, "mean": base + s}, "train_seconds": 1.0}
                for s in range(2)]
    return {"status": "ok", "dataset": "embedded", "method": method, "kind": kind, "budget": budget,
            "method_seed": None if budget is None else 0, "n_pairs": budget or 145000, "eval_seeds": [0, 1],
            "eval_split": "test", "per_seed": per_seed, "summary": {}, "config_hash": "abc"}


#: Our mean recall at 100 pairs: herding best, then distill-joint, random, kcenter; el2n is not published.
OURS_100 = {"random": 2.0, "herding": 6.0, "kcenter": 1.0, "distill-joint": 4.0, "el2n": 9.0}


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    records = tmp_path / "res" / "records"
    records.mkdir(parents=True)
    rows = [("full", "reference", None, 30.0)] + [(m, "distillation" if m == "distill-joint" else "coreset", 100, v)
                                                 for m, v in OURS_100.items()]
    for method, kind, budget, base in rows:
        (records / f"{method}_{budget}.json").write_text(json.dumps(_record(method, kind, budget, base)))
    return tmp_path / "res"


def test_rank_agreement_against_published_flickr(results: Path) -> None:
    from bench.reports.records import load_records

    agg = aggregate(load_records(results))
    ref = reference_as(load_reference("paper"), "flickr30k", ["embedded"])
    table = rank_agreement(agg, "embedded", ref, published_name="flickr30k")
    row = table.loc[100]
    pubs = published_means(ref, "embedded", "100", "vl-distill")
    common = sorted(set(OURS_100) & set(pubs))
    assert common == ["distill-joint", "herding", "kcenter", "random"] and row["n"] == 4
    expected = kendalltau([OURS_100[m] + 0.5 for m in common], [pubs[m][0] for m in common]).statistic
    assert row["tau"] == f"{expected:+.2f}"
    assert row["ours (best first)"] == "herding > distill-joint > random > kcenter"
    assert row["published (best first)"].split(" > ")[0] == "distill-joint"
    assert row["sources"] == "vl-distill"
    assert "flickr30k" in table.attrs["caption"]


def test_reference_as_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="no rows for dataset 'nope'"):
        reference_as(load_reference("paper"), "nope", ["embedded"])


def test_table_command_prints_the_agreement(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(results), "--reference", "paper", "--reference-dataset", "flickr30k"]) == 0
    out = capsys.readouterr().out
    assert "rank agreement with the published flickr30k results" in out
    assert "distill-joint (paper)" in out  # the published Flickr30K columns beside the embedded grid's
    assert main(["table", str(results), "--reference", "paper"]) == 0
    assert "distill-joint (paper)" not in capsys.readouterr().out  # 'embedded' is not a published dataset
    assert main(["table", str(results)]) == 0
    assert "rank agreement" not in capsys.readouterr().out


def test_reference_dataset_errors(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(results), "--reference-dataset", "flickr30k"]) == 2
    assert "error: --reference-dataset needs --reference" in capsys.readouterr().err
    assert main(["table", str(results), "--reference", "paper", "--reference-dataset", "nope"]) == 2
    assert "error: the reference has no rows for dataset 'nope'" in capsys.readouterr().err


def test_the_agreements_latex_keeps_n_and_tau_as_printed_under_its_own_label(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.tex"
    assert main(["table", str(results), "--reference", "paper", "--reference-dataset", "flickr30k",
                 "--format", "latex", "--output", str(out)]) == 0
    latex = out.read_text()
    labels = [line for line in latex.splitlines() if line.startswith("\\label{")]
    assert len(labels) == len(set(labels)) >= 2 and "\\label{tab:embedded-agreement}" in labels
    from bench.reports.records import load_records

    agg = aggregate(load_records(results))
    ref = reference_as(load_reference("paper"), "flickr30k", ["embedded"])
    row = rank_agreement(agg, "embedded", ref, published_name="flickr30k").loc[100]
    assert f"100 & {row['n']} & {row['tau']} & " in latex  # n = 4, not 4.0; tau with its two decimals
