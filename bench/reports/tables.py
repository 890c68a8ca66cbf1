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
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.errors import UserError
from bench.reports.records import FULL, METRIC_ORDER, method_order

BUNDLED_REFERENCE = Path(__file__).resolve().parent / "reference" / "paper_results.csv"
REFERENCE_COLUMNS = ("source", "dataset", "pairs", "method", "metric", "value", "std")
# Our method name -> the name the papers' CSV uses for the same thing.
DEFAULT_ALIASES: Mapping[str, str] = {FULL: "full-data"}
SOURCE_TITLES: Mapping[str, str] = {
    "vl-distill": "Vision-Language Dataset Distillation (Wu et al., TMLR 2024)",
    "lors": "LoRS: Low-Rank Similarity Mining for Multimodal Dataset Distillation (ICML 2024)",
    "repblend": "Beyond Modality Collapse: Representations Blending for Multimodal Dataset Distillation (NeurIPS 2025)",
    "mdm": "Multimodal Distribution Matching for Vision-Language Dataset Distillation (CVPR 2026)",
}
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
    ref["pairs"] = ref["pairs"].str.strip()
    return ref


def _fmt(mean: float, std: float | None, decimals: int | None = 1) -> str:
    """'12.3 ± 0.4'; published numbers (``decimals=None``) keep the digits the paper printed."""
    if decimals is None:
        text = lambda v: np.format_float_positional(float(v), trim="0")  # noqa: E731
    else:
        text = lambda v: f"{v:.{decimals}f}"  # noqa: E731
    if std is None or pd.isna(std):
        return text(mean)
    return f"{text(mean)} \u00b1 {text(std)}"


def _published(ref: pd.DataFrame, dataset: str, source: str) -> tuple[dict, dict]:
    """Cells {(method, pairs, metric): text} and the source chosen per (method, pairs) block.

    The source is chosen per block, not per cell: the papers re-ran the same baselines with
    different numbers, so mixing e.g. LoRS's ``mean`` into vl-distill's recalls would show a
    mean that is not the mean of the numbers beside it.
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
    return cells, chosen


def paper_table(
    agg: pd.DataFrame,
    dataset: str,
    reference: pd.DataFrame | None = None,
    metrics: Sequence[str] = METRIC_ORDER,
    source: str = "vl-distill",
    aliases: Mapping[str, str] | None = None,
    missing: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Rows (pairs, metric), columns methods then ``full``; strings "mean ± std" or "–".

    ``missing`` (cell id -> reason, as :class:`bench.grid.store.GridResults` gives it) names the
    grid's cells without a current number; those of this dataset are listed in the caption.

    With ``reference`` (see :func:`load_reference`), each of our columns that has published
    numbers for this dataset gets a "<method> (paper)" column right after it (only budgets we
    ran are shown). ``aliases`` maps our method names to the CSV's (default: full -> full-data).
    ``table.attrs`` holds ``caption``, ``dataset``, ``sources`` and ``reference_choice``.
    """
    data = agg[agg["dataset"] == dataset]
    if data.empty:
        raise ValueError(f"no results for dataset {dataset!r}; have {sorted(agg['dataset'].unique())}")
    aliases = {**DEFAULT_ALIASES, **(aliases or {})}
    budgets = sorted({int(b) for b in data["budget"] if b != FULL}) or [FULL]
    full_cols = sorted(data.loc[data["budget"] == FULL, "method"].unique()) or [FULL]
    ours = {(r.method, r.budget, r.metric): (r.mean, r.std, r.n) for r in data.itertuples()}
    index = pd.MultiIndex.from_product([budgets, list(metrics)], names=["pairs", "metric"])
    pub_cells, chosen = _published(reference, dataset, source) if reference is not None else ({}, {})
    columns: dict[str, list[str]] = {}
    used_sources: dict[str, None] = {}
    ns: list[int] = []
    for method in method_order(data) + full_cols:
        is_full = method in full_cols
        values = []
        for budget, metric in index:
            cell = ours.get((method, FULL if is_full else budget, metric))
            values.append(MISSING if cell is None else _fmt(cell[0], cell[1]))
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
    caption = (f"{dataset}: retrieval recall (%), mean \u00b1 std over {runs} pooled evaluation runs "
               f"per cell; {'/'.join(full_cols)} = model trained on the whole training set.")
    if used_sources:
        caption += " (paper) = published: " + "; ".join(
            f"{s}: {SOURCE_TITLES.get(s, s)}" for s in used_sources) + "."
    ours_missing = {c: why for c, why in (missing or {}).items() if c.startswith(f"{dataset}__")}
    if ours_missing:
        caption += " Missing (no current result): " + "; ".join(f"{c} ({why})" for c, why in ours_missing.items()) + "."
    table.attrs.update(caption=caption, dataset=dataset, sources=list(used_sources),
                       reference_choice={f"{m} @ {p}": s for (m, p), s in chosen.items()})
    return table


def mean_table(agg: pd.DataFrame, dataset: str, metric: str = "mean") -> pd.DataFrame:
    """Compact summary: rows methods (full last, repeated across budgets), columns budgets."""
    data = agg[(agg["dataset"] == dataset) & (agg["metric"] == metric)]
    if data.empty:
        raise ValueError(f"no {metric!r} results for dataset {dataset!r}")
    budgets = sorted({int(b) for b in data["budget"] if b != FULL})
    cells = {(r.method, r.budget): _fmt(r.mean, r.std) for r in data.itertuples()}
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


def _latex(table: pd.DataFrame, caption: str) -> str:
    """booktabs rules (``hrules``) and \\multirow budget labels: needs booktabs + multirow."""
    esc = table.map(latex_escape)
    esc.columns = [latex_escape(c) for c in table.columns]
    if isinstance(table.index, pd.MultiIndex):
        esc.index = pd.MultiIndex.from_tuples([tuple(latex_escape(v) for v in t) for t in table.index],
                                              names=table.index.names)
    else:
        esc.index = pd.Index([latex_escape(v) for v in table.index], name=table.index.name)
    label = "tab:" + "".join(ch if ch.isalnum() else "-" for ch in str(table.attrs.get("dataset", "results")))
    text = esc.style.to_latex(
        caption=latex_escape(caption), label=label, hrules=True, position_float="centering",
        column_format="l" * table.index.nlevels + "r" * table.shape[1],
        multirow_align="t", clines="skip-last;data" if table.index.nlevels > 1 else None,
    )
    # booktabs style: a \midrule between budget blocks, none before \bottomrule.
    text = re.sub(r"\\cline\{[0-9-]+\}\n\\bottomrule", r"\\bottomrule", text)
    return re.sub(r"\\cline\{[0-9-]+\}", r"\\midrule", text)


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
