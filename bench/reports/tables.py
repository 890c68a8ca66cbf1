"""The papers' tables from aggregated records, with the published numbers beside ours.

Layout (as in Wu et al. and LoRS): rows are (pairs, metric) blocks, columns are methods in a
fixed order, cells are "mean ± std" with one decimal. The whole-train-set model does not depend
on the budget, so its value repeats in every block: a reader compares each budget's row with it
without hunting for a separate row.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.errors import UserError
from bench.protocol.selection import SELECTION_LABELS
from bench.reports.records import (
    FULL,
    METRIC_ORDER,
    SOURCE,
    block_of,
    blocks,
    method_order,
)
from bench.reports.setting import Setting, attach_settings, comparability_note, published_setting

BUNDLED_REFERENCE = Path(__file__).resolve().parent / "reference" / "paper_results.csv"
REFERENCE_COLUMNS = ("source", "dataset", "pairs", "method", "metric", "value", "std")
# Our method name -> the name the papers' CSV uses for the same thing.
DEFAULT_ALIASES: Mapping[str, str] = {FULL: "full-data"}
SOURCE_TITLES: Mapping[str, str] = {
    "vl-distill": "Vision-Language Dataset Distillation (Wu et al., TMLR 2024)",
    "lors": "LoRS: Low-Rank Similarity Mining for Multimodal Dataset Distillation (ICML 2024)",
    "repblend": "Beyond Modality Collapse: Representations Blending for Multimodal Dataset Distillation "
                "(NeurIPS 2025)",
    "mdm": "Multimodal Distribution Matching for Vision-Language Dataset Distillation (CVPR 2026)",
    "covmatch": "CovMatch: Cross-Covariance Guided Multimodal Dataset Distillation with Trainable Text Encoder "
                "(NeurIPS 2025)",
}
#: Rows below the recalls of each budget: the normalised score and the selection's optimism.
NORM = "norm"
OPTIMISM = "optimism"
MISSING = "\u2013"  # en dash: a cell we have no number for
PAPER_SUFFIX = " (paper)"
FORMATS = ("markdown", "latex", "csv")


class ReferenceError(UserError, ValueError):
    """A published-results file that cannot be used (the message names the file)."""


def load_reference(path_or_alias: str | os.PathLike[str]) -> pd.DataFrame:
    """Published numbers in long format; ``"paper"`` means the CSV bundled with the package.

    ``pairs`` stays a string ("100", "full"); ``value``/``std`` are floats (std NaN when the
    paper gives none).
    """
    path = BUNDLED_REFERENCE if str(path_or_alias) == "paper" else Path(path_or_alias)
    if not path.is_file():
        raise ReferenceError(f"reference file {path} does not exist (use a CSV path or 'paper')")
    try:
        ref = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ReferenceError(f"{path}: the reference CSV is empty (expected a header "
                             f"{','.join(REFERENCE_COLUMNS)} and one row per published number)") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ReferenceError(f"{path}: cannot read reference CSV: {exc}") from exc
    missing = [c for c in REFERENCE_COLUMNS if c not in ref.columns]
    if missing:
        raise ReferenceError(f"{path}: reference CSV lacks column(s) {', '.join(missing)} "
                             f"(expected {', '.join(REFERENCE_COLUMNS)})")
    for col in ("value", "std"):
        text = ref[col].str.strip()
        numbers = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        bad = numbers.isna() & (text != "" if col == "std" else True)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ReferenceError(f"{path}: column {col!r} row {row + 2} is not a number: {ref[col].iloc[row]!r}")
        ref[col] = numbers.astype(float)
    _check_published_values(ref, path)
    ref["pairs"] = ref["pairs"].str.strip()
    ref = attach_settings(ref, path)
    ref.attrs["file"] = "the bundled paper_results.csv" if path == BUNDLED_REFERENCE else str(path)
    return ref


def _check_published_values(ref: pd.DataFrame, path: Path) -> None:
    """A published recall is a percentage in [0, 100] and a std a finite number >= 0: ``-5``
    or ``inf`` is a typo in the file, not a number to print beside ours as the paper's."""
    for i, row in enumerate(ref.itertuples(index=False)):
        recall = str(row.metric).strip() in METRIC_ORDER
        if not np.isfinite(row.value) or (recall and not 0 <= row.value <= 100):
            bound = "a recall in [0, 100] (percent)" if recall else "a finite number"
            raise ReferenceError(f"{path}: row {i + 2} ({row.source}, {row.method}, {row.pairs} pairs, {row.metric}): "
                                 f"value {row.value:g} is not {bound}")
        if not pd.isna(row.std) and not (np.isfinite(row.std) and row.std >= 0):
            raise ReferenceError(f"{path}: row {i + 2} ({row.source}, {row.method}, {row.pairs} pairs, {row.metric}): "
                                 f"std {row.std:g} is not a finite number >= 0")


def check_source(ref: pd.DataFrame, source: str, path: str) -> None:
    """``--source`` names a source of the reference file (a misspelt one would silently choose
    another paper's numbers)."""
    sources = sorted(set(ref["source"]))
    if source not in sources:
        raise ReferenceError(f"--source {source!r} is not a source of the reference {path} "
                             f"(its sources: {', '.join(sources)})")


def _fmt(mean: float, std: float | None, decimals: int | None = 1) -> str:
    """'12.3 ± 0.4'; published numbers (``decimals=None``) keep the digits the paper printed."""
    if decimals is None:
        text = lambda v: np.format_float_positional(float(v), trim="0")  # noqa: E731
    else:
        text = lambda v: f"{v:.{decimals}f}"  # noqa: E731
    if std is None or pd.isna(std):
        return text(mean)
    return f"{text(mean)} \u00b1 {text(std)}"


def _rule(ref: pd.DataFrame, source: str, dataset: str) -> str:
    """The selection rule behind a source's numbers, from the reference's ``rule`` column."""
    published = published_setting(ref, source, dataset)
    return published.rule if published is not None and published.rule else "rule not recorded"


def _published_mean(pubs: pd.DataFrame, source: str, method: str, pairs: str) -> float | None:
    """A source's published mean recall of (method, pairs): its ``mean`` row, else the mean of
    its six recalls when all are given; None when it gives neither."""
    rows = pubs[(pubs["source"] == source) & (pubs["method"] == method) & (pubs["pairs"] == pairs)]
    values = dict(zip(rows["metric"], rows["value"]))
    if "mean" in values:
        return float(values["mean"])
    six = [values.get(m) for m in METRIC_ORDER if m != "mean"]
    return float(np.mean(six)) if all(v is not None for v in six) else None


def _published(ref: pd.DataFrame, dataset: str, source: str) -> tuple[dict, dict]:
    """Cells {(method, pairs, metric): text} and the source chosen per (method, pairs) block.

    The source is chosen per block, not per cell: the papers re-ran the same baselines with
    different numbers, so mixing e.g. LoRS's ``mean`` into vl-distill's recalls would show a
    mean that is not the mean of the numbers beside it. The ``norm`` cell of a block is the
    source's own normalised score, from its own random row at those pairs and its own
    full-data row; "–" where the source publishes either not.
    """
    pubs = ref[ref["dataset"] == dataset]
    order = list(dict.fromkeys(pubs["source"]))
    order = ([source] if source in order else []) + [s for s in order if s != source]
    cells: dict[tuple[str, str, str], str] = {}
    chosen: dict[tuple[str, str], str] = {}
    for (method, pairs), block in pubs.groupby(["method", "pairs"], sort=False):
        src = next(s for s in order if (block["source"] == s).any())
        chosen[(method, pairs)] = src
        for row in block[block["source"] == src].itertuples():
            cells[(method, pairs, row.metric)] = _fmt(row.value, row.std, decimals=None)
        mean = _published_mean(pubs, src, method, pairs)
        random = _published_mean(pubs, src, "random", pairs)
        full = _published_mean(pubs, src, DEFAULT_ALIASES[FULL], FULL)
        if None not in (mean, random, full) and full - random >= MIN_NORM_GAP:
            cells[(method, pairs, NORM)] = f"{(mean - random) / (full - random):.2f}"
    return cells, chosen


#: The normalised score is shown only where full data beats random by at least this many
#: points of mean recall: below it the denominator is noise and the ratio meaningless.
MIN_NORM_GAP = 0.5


def normalised(data: pd.DataFrame, method: str, budget: Any, full_cols: Sequence[str]) -> float | None:
    """(method - random@budget) / (full - random@budget) on the ``mean`` recall of one block;
    None without a random row at that budget or a full row (never guessed), or when full is
    not :data:`MIN_NORM_GAP` above random."""
    means = {(r.method, r.budget): r.mean for r in data[data["metric"] == "mean"].itertuples()}
    value = means.get((method, FULL if method in full_cols else budget))
    random = means.get(("random", budget))
    full = next((means[(f, FULL)] for f in full_cols if (f, FULL) in means), None)
    if value is None or random is None or full is None or full - random < MIN_NORM_GAP:
        return None
    return (value - random) / (full - random) + 0.0  # + 0.0: no "-0.00"


def paper_table(
    agg: pd.DataFrame,
    dataset: str,
    reference: pd.DataFrame | None = None,
    metrics: Sequence[str] = METRIC_ORDER,
    source: str = "vl-distill",
    aliases: Mapping[str, str] | None = None,
    missing: Mapping[str, str] | None = None,
    student: str = SOURCE,
    protocol: str | None = None,
    select: str = "final",
    final: pd.DataFrame | None = None,
    setting: Setting | None = None,
) -> pd.DataFrame:
    """Rows (pairs, metric), columns methods then ``full``; strings "mean ± std" or "–"
    ("mean" alone for a cell of one evaluation run: n = 1, no spread).

    One block of ``agg`` (:func:`bench.reports.records.aggregate` under the rule ``select``):
    the runs of ``student`` under ``protocol`` (None: the first of the dataset's). Below the
    recalls of each budget, ``norm`` = (method - random) / (full - random) on the mean recall
    of the same block (0 = random at that budget, 1 = full data; "–" when either is missing)
    and, when ``final`` (the same records aggregated under ``final``) is given and ``select``
    is not ``final``, ``optimism`` = selected minus final mean recall.

    ``missing`` (cell id -> reason, as :class:`bench.grid.store.GridResults` gives it) names the
    grid's cells without a current number; those of this dataset are listed in the caption.

    With ``reference`` (see :func:`load_reference`), each of our columns that has published
    numbers for this dataset gets a "<method> (paper)" column right after it (only budgets we
    ran are shown), with the source's own ``norm`` where it publishes random and full rows.
    ``aliases`` maps our method names to the CSV's (default: full -> full-data). The caption
    then says where ``setting`` (ours: :func:`bench.reports.setting.our_setting`) differs from
    each source's published setting (test split, image tower, resolution, protocol), or that
    the reference has no numbers for ``dataset``.
    ``table.attrs`` holds ``caption``, ``dataset``, ``sources`` and ``reference_choice``.
    """
    if agg[agg["dataset"] == dataset].empty:
        raise ValueError(f"no results for dataset {dataset!r}; have {sorted(agg['dataset'].unique())}")
    if protocol is None:
        protocol = next((p for s, p in blocks(agg, dataset) if s == student), None)
    data = block_of(agg, dataset, student, protocol)
    if data.empty:
        raise ValueError(f"no results for dataset {dataset!r} on student {student!r} under protocol {protocol!r}")
    aliases = {**DEFAULT_ALIASES, **(aliases or {})}
    budgets = sorted({int(b) for b in data["budget"] if b != FULL}) or [FULL]
    full_cols = sorted(data.loc[data["budget"] == FULL, "method"].unique()) or [FULL]
    ours = {(r.method, r.budget, r.metric): (r.mean, r.std, r.n) for r in data.itertuples()}
    base = None if final is None or select == "final" else block_of(final, dataset, student, protocol)
    base_means = {} if base is None else {(r.method, r.budget): r.mean for r in base[base["metric"] == "mean"].itertuples()}
    extra = [NORM] + ([OPTIMISM] if base is not None else [])
    index = pd.MultiIndex.from_product([budgets, list(metrics) + extra], names=["pairs", "metric"])
    pub_cells, chosen = _published(reference, dataset, source) if reference is not None else ({}, {})
    columns: dict[str, list[str]] = {}
    used_sources: dict[str, None] = {}
    ns: list[int] = []
    no_norm = False
    for method in method_order(data) + full_cols:
        is_full = method in full_cols
        values = []
        for budget, metric in index:
            if metric == NORM:
                value = normalised(data, method, budget, full_cols)
                no_norm |= value is None and budget != FULL
                values.append(MISSING if value is None else f"{value:.2f}")
                continue
            if metric == OPTIMISM:
                picked = ours.get((method, FULL if is_full else budget, "mean"))
                last = base_means.get((method, FULL if is_full else budget))
                values.append(MISSING if picked is None or last is None else f"{picked[0] - last:+.1f}")
                continue
            cell = ours.get((method, FULL if is_full else budget, metric))
            values.append(MISSING if cell is None else _fmt(cell[0], None if cell[2] == 1 else cell[1]))
            ns += [] if cell is None else [cell[2]]
        columns[method] = values
        pub_name, pub_pairs = aliases.get(method, method), (lambda b: FULL if is_full else str(b))
        if any(k[0] == pub_name for k in pub_cells):
            columns[method + PAPER_SUFFIX] = [
                pub_cells.get((pub_name, pub_pairs(b), m), MISSING) for b, m in index
            ]
            for b in budgets:
                src = chosen.get((pub_name, pub_pairs(b)))
                if src is not None:
                    used_sources[src] = None
    table = pd.DataFrame(columns, index=index)
    table.columns.name = "method"
    runs = f"{min(ns)}" if ns and min(ns) == max(ns) else (f"{min(ns)}-{max(ns)}" if ns else "0")
    spread = ("one evaluation run per cell (n = 1: no std)" if runs == "1" else
              f"mean ± std over {runs} pooled evaluation runs per cell" + (" (a cell of one run shows no std)"
                                                                          if 1 in ns else ""))
    splits = "/".join(sorted(set(data["split"].dropna()))) or "?"
    caption = (f"{dataset}: retrieval recall (%) on the {splits} split, {SELECTION_LABELS[select]}, "
               f"student {student}, protocol {protocol}; {spread}; {'/'.join(full_cols)} = model trained on the "
               f"whole training set; norm = (method - random) / ({'/'.join(full_cols)} - random) on the mean recall.")
    if no_norm:
        caption += (" norm –: no random row at that budget or no full row in this block, or full less "
                    f"than {MIN_NORM_GAP} points above random.")
    if base is not None:
        caption += f" optimism = {select}-selected minus final mean recall."
    if used_sources:
        caption += " (paper) = published: " + "; ".join(
            f"{s}: {SOURCE_TITLES.get(s, s)}, reporting the {_rule(reference, s, dataset)}"
            for s in used_sources) + "."
    if reference is not None:
        caption += comparability_note(setting, reference, dataset, used_sources,
                                      reference.attrs.get("file", "the reference file"))
    ours_missing = {c: why for c, why in (missing or {}).items() if c.startswith(f"{dataset}__")}
    if ours_missing:
        caption += " Missing (no current result): " + "; ".join(f"{c} ({why})" for c, why in ours_missing.items()) + "."
    table.attrs.update(caption=caption, dataset=dataset, sources=list(used_sources), student=student,
                       protocol=protocol, select=select,
                       reference_choice={f"{m} @ {p}": s for (m, p), s in chosen.items()})
    return table


def _mean_cells(data: pd.DataFrame) -> dict[tuple[str, Any], tuple[float, float | None]]:
    """(method, budget) -> (mean, std) of the mean recall; std None for one run (shown without ±)."""
    return {(r.method, r.budget): (r.mean, None if r.n == 1 else r.std)
            for r in data[data["metric"] == "mean"].itertuples()}


def selection_table(aggs: Mapping[str, pd.DataFrame], dataset: str, student: str = SOURCE,
                    protocol: str | None = None) -> pd.DataFrame:
    """Mean recall of every method and budget under each selection rule, side by side: rows
    (pairs, method), columns ``final``, ``val-selected``, ``test-selected (optimistic)``,
    ``optimism`` (test-selected minus final) and the ``norm`` of each rule. ``aggs``: rule ->
    :func:`bench.reports.records.aggregate` of the same records under that rule."""
    final = aggs["final"]
    if protocol is None:
        protocol = next((p for s, p in blocks(final, dataset) if s == student), None)
    data = {rule: block_of(agg, dataset, student, protocol) for rule, agg in aggs.items()}
    cells = {rule: _mean_cells(d) for rule, d in data.items()}
    full_cols = sorted(data["final"].loc[data["final"]["budget"] == FULL, "method"].unique())
    budgets = sorted({int(b) for b in data["final"]["budget"] if b != FULL})
    labels = {"final": "final", "val": "val-selected", "test": "test-selected (optimistic)"}
    rows, index = [], []
    for budget in budgets:
        for method in method_order(data["final"]) + full_cols:
            key = (method, FULL if method in full_cols else budget)
            if key not in cells["final"]:
                continue
            row = {labels[r]: _fmt(*cells[r][key]) if key in cells[r] else MISSING for r in aggs}
            if "test" in cells and key in cells["test"]:
                row["optimism"] = f"{cells['test'][key][0] - cells['final'][key][0]:+.1f}"
            for rule in aggs:
                value = normalised(data[rule], method, budget, full_cols)
                row[f"norm ({labels[rule].split()[0]})"] = MISSING if value is None else f"{value:.2f}"
            rows.append(row)
            index.append((budget, method))
    table = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["pairs", "method"])).fillna(MISSING)
    table.columns.name = "rule"
    table.attrs.update(dataset=dataset, kind="selection", caption=(
        f"{dataset}: mean recall (%) on the test split under three epoch-selection rules from the same evaluation "
        f"runs (student {student}, protocol {protocol}): final = the last epoch (the headline); val-selected = test at "
        "the epoch of the best val mean; test-selected = the best test epoch (what LoRS, RepBlend and PDS report: "
        "optimistic); optimism = test-selected minus final; mean ± std over evaluation runs, each run selecting "
        "its own epoch."))
    return table


def students_table(agg: pd.DataFrame, dataset: str, protocol: str | None = None) -> pd.DataFrame:
    """Cross-architecture summary: rows (pairs, method), a column of mean recall per student
    (the grid's own first), ``cross-arch`` = the mean over the other students (MDM's Table 2
    definition) and ``cross-arch norm`` = the mean of their normalised scores."""
    students = list(dict.fromkeys(s for s, _ in blocks(agg, dataset)))
    data = {s: block_of(agg, dataset, s, protocol or next(p for t, p in blocks(agg, dataset) if t == s))
            for s in students}
    others = [s for s in students if s != SOURCE]
    full_cols = sorted(data[SOURCE].loc[data[SOURCE]["budget"] == FULL, "method"].unique())
    budgets = sorted({int(b) for b in data[SOURCE]["budget"] if b != FULL})
    rows, index = [], []
    for budget in budgets:
        for method in method_order(data[SOURCE]) + full_cols:
            key = (method, FULL if method in full_cols else budget)
            cells = {s: _mean_cells(d).get(key) for s, d in data.items()}
            if all(c is None for c in cells.values()):
                continue
            row = {s: MISSING if c is None else _fmt(*c) for s, c in cells.items()}
            means = [cells[s][0] for s in others if cells[s] is not None]
            row["cross-arch"] = f"{np.mean(means):.1f}" if others and len(means) == len(others) else MISSING
            norms = [normalised(data[s], method, budget, full_cols) for s in others]
            row["cross-arch norm"] = (f"{np.mean(norms):.2f}" if others and None not in norms else MISSING)
            rows.append(row)
            index.append((budget, method))
    table = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["pairs", "method"]))
    table.columns.name = "student"
    table.attrs.update(dataset=dataset, kind="students", caption=(
        f"{dataset}: mean recall (%) of each set trained on each student (source = the student the sets were made "
        f"with), final epoch; cross-arch = mean over the {len(others)} other student(s); cross-arch norm = the mean "
        "of their normalised scores (0 = random at that budget on that student, 1 = full data on it)."))
    return table


def mean_table(agg: pd.DataFrame, dataset: str, metric: str = "mean", student: str = SOURCE,
               protocol: str | None = None) -> pd.DataFrame:
    """Compact summary of one block: rows methods (full last, repeated across budgets), columns budgets."""
    if protocol is None:
        protocol = next((p for s, p in blocks(agg, dataset) if s == student), None)
    data = block_of(agg, dataset, student, protocol)
    data = data[data["metric"] == metric]
    if data.empty:
        raise ValueError(f"no {metric!r} results for dataset {dataset!r}")
    budgets = sorted({int(b) for b in data["budget"] if b != FULL})
    cells = {(r.method, r.budget): _fmt(r.mean, None if r.n == 1 else r.std) for r in data.itertuples()}
    full_rows = sorted(data.loc[data["budget"] == FULL, "method"].unique())
    rows = {m: [cells.get((m, b), MISSING) for b in budgets] for m in method_order(data)}
    rows.update({m: [cells[(m, FULL)]] * max(len(budgets), 1) for m in full_rows})
    table = pd.DataFrame.from_dict(rows, orient="index", columns=budgets or [FULL])
    table.index.name, table.columns.name = "method", "pairs"
    table.attrs["caption"] = f"{dataset}: {metric} recall (%) by budget, mean \u00b1 std."
    return table


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def latex_escape(value: object) -> str:
    """Escape LaTeX specials; '±' -> '$\\pm$', '–' -> '--'. '@' needs no escape in text mode."""
    text = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(value))
    return text.replace("\u00b1", r"$\pm$").replace(MISSING, "--")


#: The preamble a rendered LaTeX table needs, written as its first lines.
LATEX_PACKAGES = ("booktabs", "multirow", "graphicx")
LATEX_HEADER = (
    "% Generated by vl-distill-bench (run_bench.py table --format latex).\n"
    "% Needs in the preamble: " + " ".join(r"\usepackage{%s}" % p for p in LATEX_PACKAGES) + "\n"
    r"% (booktabs: the rules; multirow: the budget labels; graphicx: \resizebox, which shrinks a table wider"
    "\n"
    r"% than the text to \linewidth and leaves a narrower one as it is)."
    "\n")
#: Decimals of every number in a LaTeX table: recalls (ours and published) and optimism 1, norm 2.
LATEX_DECIMALS = {"recall": 1, NORM: 2}
_NUMBER = re.compile(r"([-+]?)(\d+(?:\.\d+)?)")


def _decimals(text: str, places: int) -> str:
    """Every number of a cell with ``places`` decimals, rounded half up from the printed digits
    (a published "27.32" -> "27.3"; a sign kept as written)."""
    quantum = Decimal(1).scaleb(-places)
    return _NUMBER.sub(lambda m: m.group(1) + str(Decimal(m.group(2)).quantize(quantum, rounding=ROUND_HALF_UP)),
                       text)


#: ``table.attrs`` key: the columns a table prints as they are in LaTeX too (counts, parameter
#: values, statistics that carry their own format), which :func:`uniform_decimals` leaves alone.
AS_PRINTED = "latex_as_printed"


def uniform_decimals(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (strings) with each number at :data:`LATEX_DECIMALS`: in the ``norm`` row or a
    column named for norm 2 decimals, everywhere else 1, so no column mixes the papers' one and
    two decimals with ours. Columns named in ``table.attrs[AS_PRINTED]`` keep their digits: a
    count of 6 is not "6.0", nor a chosen lr of 0.003 "0.0"."""
    level = list(table.index.names).index("metric") if "metric" in table.index.names else None
    as_printed = set(table.attrs.get(AS_PRINTED, ()))
    out = table.astype(str)
    for i, key in enumerate(table.index):
        metric = (key[level] if isinstance(key, tuple) else key) if level is not None else None
        for j, column in enumerate(table.columns):
            if column in as_printed:
                continue
            norm = metric == NORM or "norm" in str(column)
            out.iat[i, j] = _decimals(out.iat[i, j], LATEX_DECIMALS[NORM] if norm else LATEX_DECIMALS["recall"])
    return out


def _latex_cell(value: str) -> str:
    """An escaped cell, the std after the mean in \\scriptsize (the compact style of the papers)."""
    mean, sep, std = value.partition(" \u00b1 ")
    return latex_escape(mean) + (r"{\scriptsize $\pm$" + latex_escape(std) + "}" if sep else "")


def _latex(table: pd.DataFrame, caption: str) -> str:
    """A compact table float: :data:`LATEX_HEADER` names the packages; booktabs rules,
    \\multirow budget labels, \\small with narrow column gaps, the std in \\scriptsize, one
    header row, numbers at :data:`LATEX_DECIMALS`, and a \\resizebox that fits the text width."""
    shown = uniform_decimals(table)
    if not shown.equals(table.astype(str)):
        caption += " Published numbers rounded to one decimal (norm: two)."
    esc = shown.map(_latex_cell)
    esc.columns = [latex_escape(c) for c in table.columns]
    if isinstance(table.index, pd.MultiIndex):
        esc.index = pd.MultiIndex.from_tuples([tuple(latex_escape(v) for v in t) for t in table.index],
                                              names=table.index.names)
    else:
        esc.index = pd.Index([latex_escape(v) for v in table.index], name=table.index.name)
    name = "-".join(str(table.attrs[k]) for k in ("dataset", "kind") if table.attrs.get(k)) or "results"
    label = "tab:" + "".join(ch if ch.isalnum() else "-" for ch in name)
    text = esc.style.to_latex(
        caption=latex_escape(caption), label=label, hrules=True, position_float="centering",
        column_format="l" * table.index.nlevels + "r" * table.shape[1],
        multirow_align="t", clines="skip-last;data" if table.index.nlevels > 1 else None,
    )
    # booktabs style: a \midrule between budget blocks, none before \bottomrule.
    text = re.sub(r"\\cline\{[0-9-]+\}\n\\bottomrule", r"\\bottomrule", text)
    text = re.sub(r"\\cline\{[0-9-]+\}", r"\\midrule", text)
    # One header row: the index names take the empty first cells of the column names' row.
    names = [latex_escape(n) for n in table.index.names if n is not None]
    if len(names) == table.index.nlevels:
        names_row = " & ".join(names) + " & " + " & ".join([""] * table.shape[1]) + " \\\\\n"
        head = "\\toprule\n" + " & " * table.index.nlevels
        if head in text and names_row in text:
            text = text.replace(names_row, "", 1).replace(head, "\\toprule\n" + " & ".join(names) + " & ", 1)
    text = text.replace("\\centering\n", "\\centering\n\\small\n\\setlength{\\tabcolsep}{3pt}\n", 1)
    text = text.replace("\\begin{tabular}", "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n"
                        "\\begin{tabular}", 1).replace("\\end{tabular}\n", "\\end{tabular}}\n", 1)
    return LATEX_HEADER + text


def render(table: pd.DataFrame, fmt: str, caption: str | None = None) -> str:
    """The table as markdown (caption line + pipe table), LaTeX (table float) or CSV."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    caption = caption if caption is not None else table.attrs.get("caption", "")
    if fmt == "csv":
        return table.to_csv()
    if fmt == "latex":
        return _latex(table, caption)
    flat = table.reset_index()
    if isinstance(table.index, pd.MultiIndex):  # print each budget once per block, as the papers do
        first = flat.columns[0]
        flat[first] = flat[first].where(flat[first].ne(flat[first].shift()), "").astype(str)
    align = ["left"] * table.index.nlevels + ["right"] * table.shape[1]
    body = flat.to_markdown(index=False, disable_numparse=True, colalign=align)
    return f"{caption}\n\n{body}\n" if caption else body + "\n"
