"""Issue 26, items 4 and 6: which method won (console order, best mark, norm, n = 1), plots a
reader can tell apart (a colour per method, legend outside, line style per split), and whether
our numbers compare with the published ones (the caption names every difference of setting).
Synthetic records only: no training."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bench.commands.cli import main
from bench.commands.console import print_records
from bench.core.config import to_dict
from bench.grid.record import CellRecord
from bench.grid.spec import load_grid
from bench.reports import plots
from bench.reports.plots import FULL_COLOUR, RANDOM_COLOUR, method_colours, plot_curves, plot_recall_vs_budget
from bench.reports.records import aggregate, method_order
from bench.reports.setting import Setting, our_setting
from bench.reports.summary import summary_rows
from bench.reports.tables import LATEX_PACKAGES, MISSING, load_reference, mean_table, paper_table, render

REPO = Path(__file__).resolve().parent.parent
RECALLS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10")
KINDS = {"full": "reference", "random": "coreset", "herding": "coreset", "kcenter": "coreset",
         "forgetting": "coreset", "ccs": "coreset", "distill-joint": "distillation", "lors": "distillation",
         "mdm": "distillation"}


def _metrics(base: float, seed: int) -> dict[str, float]:
    values = {m: base + 0.5 * i + 0.2 * seed for i, m in enumerate(RECALLS)}
    values["mean"] = float(np.mean(list(values.values())))
    return values


def _record(method: str, budget: int | None, base: float, seeds: int = 3, dataset: str = "flickr30k",
            method_seed: int | None = 0, **extra) -> CellRecord:
    data = {"dataset": dataset, "method": method, "kind": KINDS.get(method, "distillation"), "budget": budget,
            "method_seed": None if budget is None else method_seed, "eval_split": "test",
            "eval_seeds": list(range(seeds)),
            "per_seed": [{"seed": s, "metrics": _metrics(base, s)} for s in range(seeds)],
            "method_cost": {"seconds": 2.0}, "eval_cost": {"seconds": 5.0}, **extra}
    return CellRecord.from_json(data)


def _grid_records() -> list[CellRecord]:
    """Methods named so that alphabetical order puts random in the middle (the old console)."""
    bases = {"ccs": 2.0, "distill-joint": 6.0, "forgetting": 1.5, "herding": 2.5, "kcenter": 1.8, "lors": 7.0,
             "random": 1.0}
    recs = [_record("full", None, 30.0)]
    for budget, shift in ((100, 0.0), (200, 1.0)):
        recs += [_record(m, budget, b + shift) for m, b in bases.items()]
    recs.append(_record("mdm", 100, 3.0, seeds=1))  # one evaluation run: n = 1
    return recs


def _console_rows(records: list[CellRecord]) -> list[list[str]]:
    out = io.StringIO()
    print_records(records, Console(file=out, width=300))
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in out.getvalue().splitlines()
            if line.startswith("│")]
    return [r for r in rows if r[0] != "pairs"]


def test_console_rows_follow_the_tables_order_with_full_last() -> None:
    records = _grid_records()
    rows = _console_rows(records)
    table = paper_table(aggregate(records), "flickr30k")
    columns = [c for c in table.columns if c != "full"]
    assert columns == method_order(aggregate(records))  # one ordering, shared
    at_100 = [r[1] for r in rows[:len(columns)]]
    assert at_100 == columns == ["random", "herding", "kcenter", "forgetting", "ccs", "distill-joint", "lors", "mdm"]
    assert rows[0][0] == "100" and rows[1][0] == ""  # the budget once per block
    assert [r[1] for r in rows[len(columns):]] == ["random", "herding", "kcenter", "forgetting", "ccs",
                                                   "distill-joint", "lors", "full"]
    assert rows[-1][0] == "full"


def test_console_marks_the_best_per_budget_but_never_full() -> None:
    records = _grid_records()
    rows = _console_rows(records)
    best = [(r[0] or None, r[1]) for r in rows if r[2] == "*"]
    assert [m for _, m in best] == ["lors", "lors"]  # full (30.0) has the highest recall: not a contender
    summary, _ = summary_rows(records, "flickr30k")
    assert {(r.budget, r.method) for r in summary if r.best} == {(100, "lors"), (200, "lors")}
    # A tie shares the mark; a budget with one method has none.
    tie = _grid_records() + [_record("repblend", 100, 7.0)]
    marked = {(r.budget, r.method) for r in summary_rows(tie, "flickr30k")[0] if r.best}
    assert marked == {(100, "lors"), (100, "repblend"), (200, "lors")}
    alone = [_record("full", None, 30.0), _record("random", 100, 1.0)]
    assert not any(r.best for r in summary_rows(alone, "flickr30k")[0])


def test_console_norm_is_the_tables_norm_and_one_run_shows_n_1() -> None:
    records = _grid_records()
    rows = {(r[1], i < 8): r for i, r in enumerate(_console_rows(records))}
    table = paper_table(aggregate(records), "flickr30k")
    header = ["pairs", "method", "best", *[m.upper() for m in (*RECALLS, "mean")], "norm", "n", "method s", "eval s"]
    col = {name: i for i, name in enumerate(header)}
    for method in ("random", "herding", "lors", "mdm"):
        assert rows[(method, True)][col["norm"]] == table.loc[(100, "norm"), method]
    mdm, lors = rows[("mdm", True)], rows[("lors", True)]
    assert mdm[col["n"]] == "1" and lors[col["n"]] == "3"
    assert mdm[col["MEAN"]] == f"{_metrics(3.0, 0)['mean']:.1f}"  # no "± 0.0"
    assert "±" not in "".join(mdm) and "± " in lors[col["MEAN"]]
    assert lors[col["method s"]] == "2.0" and lors[col["eval s"]] == "5"


def test_method_seconds_count_the_matching_a_reused_checkpoint_had_cost() -> None:
    """A test cell that reused its trial's finished checkpoint spent 2 s itself; its set cost
    that plus the trial's 300 s of matching. Seeds that distilled afresh count their own time.
    A record from before ``matching_seconds_earlier`` counts at least its matching time."""
    reused = _record("lors", 100, 7.0, method_seed=0,
                     method_info={"matching_seconds": 300.5, "matching_seconds_earlier": 300.0, "resumes": 1})
    fresh = _record("lors", 100, 7.0, method_seed=1, method_cost={"seconds": 310.0},
                    method_info={"matching_seconds": 305.0, "matching_seconds_earlier": 0.0, "resumes": 0})
    older = _record("lors", 100, 7.0, method_seed=2, method_info={"matching_seconds": 290.0, "resumes": 1})
    assert reused.method_cost["seconds"] == 2.0
    assert (reused.set_seconds(), fresh.set_seconds(), older.set_seconds()) == (302.0, 310.0, 290.0)
    assert _record("random", 100, 1.0).set_seconds() == 2.0  # a coreset: its own time
    rows = _console_rows([_record("full", None, 30.0), _record("random", 100, 1.0), reused, fresh, older])
    lors = next(r for r in rows if r[1] == "lors")
    assert lors[-2] == f"{(302.0 + 310.0 + 290.0) / 3:.1f}"


def test_console_title_says_n_1_when_every_cell_has_one_run() -> None:
    out = io.StringIO()
    print_records([_record("full", None, 30.0, seeds=1), _record("random", 100, 1.0, seeds=1),
                   _record("lors", 100, 5.0, seeds=1)], Console(file=out, width=300))
    text = out.getvalue()
    assert "n = 1" in text and "± 0.0" not in text and "±" not in text.split("\n", 2)[2].split("best mean")[0]


def test_a_table_cell_of_one_run_shows_no_zero_std() -> None:
    table = paper_table(aggregate([_record("full", None, 30.0, seeds=1), _record("random", 100, 1.0, seeds=1)]),
                        "flickr30k")
    assert table.loc[(100, "tr@1"), "random"] == "1.0"
    assert "one evaluation run per cell (n = 1" in table.attrs["caption"]
    mixed = aggregate([_record("full", None, 30.0), _record("random", 100, 1.0, seeds=1)])
    table = paper_table(mixed, "flickr30k")
    assert table.loc[(100, "tr@1"), "random"] == "1.0" and table.loc[(100, "tr@1"), "full"] == "30.2 ± 0.2"
    assert "(a cell of one run shows no std)" in table.attrs["caption"]
    compact = mean_table(mixed, "flickr30k")
    assert compact.loc["random", 100] == f"{_metrics(1.0, 0)['mean']:.1f}" and "±" in compact.loc["full", 100]


# ----------------------------------------------------------------------------------- plots

FOURTEEN = ["random", "herding", "kcenter", "forgetting", "ccs", "el2n", "clip-score", "d2", "distill-joint",
            "distill-text", "lors", "repblend", "mdm", "tesla-wbce"]


def _curve(base: float, seeds: int = 2) -> list[dict]:
    return [{"seed": s, "metrics": _metrics(base, s),
             "curve": [{"epoch": e, "split": split, "mean": base + e / 10 + (0.3 if split == "val" else 0.0)}
                       for e in (0, 10, 20) for split in ("val", "test")]} for s in range(seeds)]


def _capture(monkeypatch: pytest.MonkeyPatch) -> list:
    figures = []

    def keep(fig, path, dpi):  # noqa: ANN001, ANN202
        fig.canvas.draw()
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


def _outside(fig, ax) -> bool:  # noqa: ANN001
    """The legend's box lies entirely right of the axes' box (display coordinates)."""
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    axes = ax.get_window_extent(renderer)
    return legend.x0 >= axes.x1 and not legend.overlaps(axes)


def test_method_colours_never_repeat_and_fix_random_and_full() -> None:
    for n in (3, 9, 10, 14, 18, 19, 30):
        methods = ["random", *[f"m{i}" for i in range(n)], "full"]
        colours = method_colours(methods)
        assert len(set(colours.values())) == len(methods), n
        assert colours["random"] == RANDOM_COLOUR and colours["full"] == FULL_COLOUR
        assert method_colours(methods) == colours  # deterministic


def test_curves_plot_of_fourteen_methods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26: 26 legend entries over the lines, random and mdm one blue, herding and
    repblend one orange. Now: one colour per method, the legend outside, style = split."""
    records = [CellRecord.from_json({"dataset": "d", "method": m, "kind": KINDS.get(m, "coreset" if i < 8 else
                                     "distillation"), "budget": 100, "method_seed": 0, "eval_split": "test",
                                     "per_seed": _curve(1.0 + i)}) for i, m in enumerate(FOURTEEN)]
    records.append(CellRecord.from_json({"dataset": "d", "method": "full", "kind": "reference", "budget": None,
                                         "eval_split": "test", "per_seed": _curve(20.0)}))
    figures = _capture(monkeypatch)
    plot_curves(records, "d", 100, tmp_path / "curves.png")
    fig = figures[0]
    ax = fig.axes[0]
    colour_of: dict[str, set] = {}
    for line in ax.get_lines():
        method, split = re.fullmatch(r"(.+) \((test|val)\)", line.get_label()).groups()
        colour_of.setdefault(method, set()).add(line.get_color())
        assert line.get_linestyle() == {"test": "-", "val": "--"}[split]
    assert set(colour_of) == set(FOURTEEN) | {"full"}
    assert all(len(c) == 1 for c in colour_of.values())  # both splits of a method: one colour
    assert len({c for cs in colour_of.values() for c in cs}) == len(colour_of)  # never repeated
    assert colour_of["random"] == {RANDOM_COLOUR} and colour_of["full"] == {FULL_COLOUR}
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == method_order_of_fourteen() + ["full", "test split", "val split"]  # 17 entries, not 30
    assert _outside(fig, ax)


def method_order_of_fourteen() -> list[str]:
    import pandas as pd

    kinds = [KINDS.get(m, "coreset" if i < 8 else "distillation") for i, m in enumerate(FOURTEEN)]
    return method_order(pd.DataFrame({"method": FOURTEEN, "kind": kinds}))


def test_recall_vs_budget_legend_outside_and_colours_unique(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [_record("full", None, 30.0)] + [_record(m, b, 1.0 + i + b / 100) for i, m in enumerate(FOURTEEN)
                                               for b in (100, 200)]
    figures = _capture(monkeypatch)
    plot_recall_vs_budget(aggregate(records), "flickr30k", tmp_path / "r.png")
    fig = figures[0]
    ax = fig.axes[0]
    colours = [c.lines[0].get_color() for c in ax.containers]  # one errorbar container per method
    assert len(colours) == len(FOURTEEN) == len(set(colours))
    assert _outside(fig, ax)


# ---------------------------------------------------------------------- comparability captions

PAPER = Setting(split="test", images=1000, captions=5000, tower="nfnet_l0", training="trained", resolution=224,
                protocol="vl-distill", selection="final")


def _caption(setting: Setting | None, dataset: str = "flickr30k", reference=None) -> str:  # noqa: ANN001
    records = [_record("full", None, 30.0, dataset=dataset), _record("random", 100, 1.0, dataset=dataset),
               _record("distill-joint", 100, 4.0, dataset=dataset)]
    ref = load_reference("paper") if reference is None else reference
    return paper_table(aggregate(records), dataset, reference=ref, setting=setting).attrs["caption"]


def test_caption_says_same_setting_when_everything_matches() -> None:
    caption = _caption(PAPER)
    assert "Same setting as vl-distill's published one" in caption and "differs" not in caption


@pytest.mark.parametrize("change, expected", [
    ({"images": 30, "captions": 150},
     "test split of 30 images / 150 captions, the paper's 1,000 images / 5,000 captions"),
    ({"split": "val", "images": 1014, "captions": 5070},
     "we evaluate on the val split (1,014 images / 5,070 captions), the paper on the test split"),
    ({"tower": "convnet (width 128, depth 3)"}, "image tower convnet (width 128, depth 3), trained (the paper's: "
                                                "nfnet_l0, trained)"),
    ({"training": "frozen"}, "image tower nfnet_l0, frozen (the paper's: nfnet_l0, trained)"),
    ({"resolution": 32}, "resolution 32 px (the paper's: 224 px)"),
    ({"protocol": "suite"}, "protocol suite, final epoch (the paper's: final epoch (51 epochs of training); "
                            "the vl-distill preset reproduces it)"),
    ({"selection": "test"}, "protocol vl-distill, best test epoch (test-selected, optimistic)"),
])
def test_caption_names_each_difference_of_setting(change: dict, expected: str) -> None:
    from dataclasses import replace

    caption = _caption(replace(PAPER, **change))
    assert "Setting differs from vl-distill's published one, so the numbers do not compare directly" in caption
    assert expected in caption
    assert caption.count(" (the paper's") + caption.count(", the paper's") + caption.count("the paper on") == 1


def test_caption_without_published_numbers_for_the_dataset() -> None:
    caption = _caption(PAPER, dataset="embedded")
    assert "No published numbers for dataset embedded in the bundled paper_results.csv (it has coco, flickr30k)" \
        in caption
    assert "(paper)" not in caption.split("No published")[0]


def test_caption_with_a_reference_file_that_gives_no_setting(tmp_path: Path) -> None:
    own = tmp_path / "mine.csv"
    own.write_text("source,dataset,pairs,method,metric,value,std\nmine,flickr30k,100,random,tr@1,1.0,\n")
    caption = _caption(PAPER, reference=load_reference(own))
    assert f"{own} does not give mine's published setting" in caption
    with_setting = tmp_path / "set.csv"
    with_setting.write_text("source,dataset,pairs,method,metric,value,std,test_images,test_captions,resolution\n"
                            "mine,flickr30k,100,random,tr@1,1.0,,1000,5000,64\n")
    caption = _caption(PAPER, reference=load_reference(with_setting))
    assert "resolution 224 px (the paper's: 64 px)" in caption and "test split" not in caption.split("differs")[1]


def test_repblend_and_mdm_settings_are_named() -> None:
    """RepBlend freezes the tower; no preset reproduces RepBlend's or MDM's rule."""
    records = [_record("full", None, 30.0), _record("random", 100, 1.0), _record("repblend", 100, 9.0),
               _record("mdm", 100, 8.0)]
    caption = paper_table(aggregate(records), "flickr30k", reference=load_reference("paper"),
                          setting=PAPER).attrs["caption"]
    repblend = caption.split("Setting differs from repblend's")[1].split("Setting differs")[0]
    assert "image tower nfnet_l0, trained (the paper's: nfnet_l0, frozen)" in repblend
    assert "no preset of this suite reproduces it" in repblend
    assert "no preset of this suite reproduces it" in caption.split("Setting differs from mdm's")[1]


def _write(records_dir: Path, rec: CellRecord) -> None:
    records_dir.mkdir(parents=True, exist_ok=True)
    (records_dir / f"{rec.method}_{rec.budget}.json").write_text(json.dumps(rec.to_json()))


def test_table_command_names_the_issue_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's run: Flickr30K with a 30-image test split and a 32-px ConvNet, shown beside the
    paper's numbers without a word. The setting is read from the records' config."""
    monkeypatch.chdir(tmp_path)
    grid = load_grid(REPO / "configs" / "flickr30k.yaml",
                     ["datasets.0.karpathy.resolution=32", "model.image_encoder={name: convnet}"])
    config = to_dict(grid)
    sizes = {"test": {"images": 30, "captions": 150}}
    for method, budget, base in (("full", None, 30.0), ("random", 100, 1.0), ("distill-joint", 100, 4.0)):
        _write(tmp_path / "res" / "records", _record(method, budget, base, config=config, split_sizes=sizes))
    assert our_setting([_record("random", 100, 1.0, config=config, split_sizes=sizes)], "flickr30k") == Setting(
        split="test", images=30, captions=150, tower="convnet (width 128, depth 3)", training="trained",
        resolution=32, protocol="suite", selection="final")
    assert main(["table", str(tmp_path / "res"), "--reference", "paper"]) == 0
    out = capsys.readouterr().out
    for phrase in ("test split of 30 images / 150 captions, the paper's 1,000 images / 5,000 captions",
                   "image tower convnet (width 128, depth 3), trained (the paper's: nfnet_l0, trained)",
                   "resolution 32 px (the paper's: 224 px)", "protocol suite, final epoch"):
        assert phrase in out, phrase


def test_paper_config_records_differ_only_in_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/flickr30k.yaml is the published recipe except its evaluation protocol (suite:
    50 epochs, learned step sizes per side); under the vl-distill preset it is the same setting."""
    monkeypatch.chdir(tmp_path)
    sizes = {"test": {"images": 1000, "captions": 5000}}
    for protocol, same in (("suite", False), ("vl-distill", True)):
        config = to_dict(load_grid(REPO / "configs" / "flickr30k.yaml", [f"evaluation.protocol={protocol}"]))
        records = [_record("full", None, 30.0, config=config, split_sizes=sizes),
                   _record("random", 100, 1.0, config=config, split_sizes=sizes, eval_protocol=protocol)]
        setting = our_setting(records, "flickr30k", protocol=protocol)
        caption = paper_table(aggregate(records), "flickr30k", reference=load_reference("paper"),
                              setting=setting).attrs["caption"]
        assert ("Same setting as vl-distill's published one" in caption) == same
        if not same:
            differs = caption.split("Setting differs from vl-distill's published one")[1]
            assert "protocol suite" in differs and "test split" not in differs and "resolution" not in differs
            assert "image tower" not in differs


# ---------------------------------------------------------------------------------- LaTeX


def test_latex_names_its_packages_is_compact_and_has_consistent_decimals() -> None:
    records = [_record("full", None, 30.0), _record("random", 100, 1.0), _record("herding", 100, 2.0),
               _record("distill-joint", 100, 4.0)]
    table = paper_table(aggregate(records), "flickr30k", reference=load_reference("paper"), setting=PAPER)
    assert "27.32" in render(table, "markdown")  # the markdown keeps the paper's printed digits
    latex = render(table, "latex")
    header = [line for line in latex.splitlines() if line.startswith("%")]
    needs = " ".join(header)
    for package in LATEX_PACKAGES:
        assert f"\\usepackage{{{package}}}" in needs
    body = "\n".join(line for line in latex.splitlines() if not line.startswith("%"))
    for command, package in (("\\toprule", "booktabs"), ("\\multirow", "multirow"), ("\\resizebox", "graphicx")):
        assert command in body and package in LATEX_PACKAGES
    assert "\\small" in body and "\\setlength{\\tabcolsep}" in body and "\\scriptsize" in body
    assert body.count("\\toprule\npairs & metric & random") == 1  # one header row
    rows = [line for line in body.splitlines() if " & " in line and "\\\\" in line][1:]
    assert len(rows) == 8
    for line in rows:
        cells = [c.strip(" \\") for c in line.split(" & ")]
        metric, values = cells[1], cells[2:]
        numbers = re.findall(r"\d+\.\d+|\d+", " ".join(v.replace("--", "") for v in values))
        places = {len(n.split(".")[1]) if "." in n else 0 for n in numbers}
        assert places == ({2} if metric == "norm" else {1}), line
    assert "27.3" in body and "27.32" not in body
    assert "Published numbers rounded to one decimal" in body
    assert MISSING not in body


def test_records_without_config_say_what_is_not_recorded() -> None:
    """Records written before they kept their config (or split sizes): the caption says so
    rather than guessing a match."""
    caption = _caption(our_setting([_record("random", 100, 1.0)], "flickr30k"))
    differs = caption.split("Setting differs from vl-distill's published one")[1]
    for phrase in ("our test split's size is not recorded (the paper's: 1,000 images / 5,000 captions)",
                   "our image tower is not recorded (the paper's: nfnet_l0, trained)",
                   "our resolution is not recorded (the paper's: 224 px)", "protocol suite, final epoch"):
        assert phrase in differs, phrase
