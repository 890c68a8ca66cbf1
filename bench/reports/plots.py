"""Plots of a grid's results: recall against budget and against evaluation epoch (PNG, atomic writes).

Figures are saved with :func:`bench.grid.pictures.save_figure` (the Agg backend, set there
before pyplot loads, so reports work on headless cluster nodes).

Colours: one per method, never repeated within a figure (:func:`method_colours`): ``random``
black and ``full`` grey in every figure, the other methods in the tables' order from a palette
sized to their number. The legend sits outside the axes, right of them, so it never hides a line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator

from bench.grid.pictures import plt, save_figure
from bench.grid.record import CellRecord
from bench.reports.records import FULL, SOURCE, block_of, blocks, method_order

#: Fixed colours: the floor and the ceiling of every plot are recognisable at a glance.
RANDOM_COLOUR = "#000000"
FULL_COLOUR = "#7f7f7f"
_GREYS = {"#7f7f7f", "#c7c7c7"}  # tab10/tab20's greys: kept for full, never given to a method
#: Where the legend goes: its upper left corner just right of the axes.
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """A distinct colour per method (hex): ``random`` black, ``full`` grey, every other name in
    the order given from tab10 (up to 9 of them),
    tab20 (up to 18: its nine dark shades, then the light ones) or evenly spaced hues of
    ``turbo`` beyond; deterministic, never repeated."""
    others = [m for m in dict.fromkeys(methods) if m not in ("random", FULL)]
    if len(others) <= 9:
        palette = [c for c in map(to_hex, colormaps["tab10"].colors) if c not in _GREYS]
    elif len(others) <= 18:  # tab20's dark shades first, then the light ones: neighbours differ in hue
        tab20 = [to_hex(c) for c in colormaps["tab20"].colors]
        palette = [c for c in tab20[0::2] + tab20[1::2] if c not in _GREYS]
    else:  # 0.05 .. 0.95: turbo's darkest and brightest ends are hard to tell from black and white
        palette = [to_hex(colormaps["turbo"](0.05 + 0.9 * i / (len(others) - 1))) for i in range(len(others))]
    colours = dict(zip(others, palette))
    if "random" in methods:
        colours["random"] = RANDOM_COLOUR
    if FULL in methods:
        colours[FULL] = FULL_COLOUR
    return colours


def _legend_outside(ax, handles=None, ncol: int = 1) -> None:  # noqa: ANN001
    """The legend right of the axes (``save_figure`` saves with a tight box, so it is kept)."""
    kwargs = {"handles": handles} if handles is not None else {}
    ax.legend(fontsize=8, ncol=ncol, **LEGEND_OUTSIDE, **kwargs)


def plot_recall_vs_budget(
    agg: pd.DataFrame, dataset: str, path: str | os.PathLike[str], metric: str = "mean"
) -> Path:
    """One line per method (error bars = pooled std) over budgets; full data as a dashed line.

    The x axis is logarithmic when budgets span more than 4x (paper grids go 100..1000), with
    ticks exactly at the budgets so each point can be read off.
    """
    first = next((p for s, p in blocks(agg, dataset) if s == SOURCE), None)
    data = block_of(agg, dataset, SOURCE, first)
    data = data[data["metric"] == metric]
    if data.empty:
        raise ValueError(f"no {metric!r} results for dataset {dataset!r} to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = sorted({int(b) for b in data["budget"] if b != FULL})
    full_rows = list(data[data["budget"] == FULL].itertuples())
    colours = method_colours(method_order(data) + [r.method for r in full_rows])
    for method in method_order(data):
        rows = data[(data["method"] == method) & (data["budget"] != FULL)]
        rows = rows.assign(budget=rows["budget"].astype(int)).sort_values("budget")
        distill = rows["kind"].iloc[0] not in ("coreset", "reference")
        ax.errorbar(rows["budget"], rows["mean"], yerr=rows["std"], label=method, capsize=3,
                    marker="s" if distill else "o", linewidth=2.0 if distill else 1.4, color=colours[method])
    for row in full_rows:
        colour = colours.get(row.method, FULL_COLOUR)
        label = f"{row.method} ({row.mean:.1f})"
        ax.axhline(row.mean, linestyle="--", color=colour, linewidth=1.2, label=label)
        ax.annotate(label, xy=(0.99, row.mean), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=8, color=colour, xytext=(0, 2), textcoords="offset points")
    if budgets and budgets[-1] > 4 * budgets[0]:
        ax.set_xscale("log")
    if budgets:
        ax.xaxis.set_major_locator(FixedLocator(budgets))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(b) for b in budgets])
        lo, hi = budgets[0], budgets[-1]
        if ax.get_xscale() == "log":  # a margin of a fixed fraction of the decades spanned
            factor = (hi / lo) ** 0.08
            ax.set_xlim(lo / factor, hi * factor)
        else:
            margin = 0.06 * (hi - lo) if hi > lo else 0.5 * lo
            ax.set_xlim(lo - margin, hi + margin)
    ax.set_xlabel("budget (training pairs)")
    ax.set_ylabel(f"{metric} recall (%)" if metric == "mean" else f"{metric} (%)")
    ax.set_title(f"{dataset}: {metric} vs budget")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.05)  # room for the full-data label
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return save_figure(fig, path, dpi=130)


#: Line style of each split in the curves plot (the colour is the method's).
SPLIT_STYLES = (("test", "-"), ("val", "--"))


def plot_curves(records: Sequence[CellRecord], dataset: str, budget: int, path: str | os.PathLike[str]) -> Path:
    """Mean recall against evaluation epoch for every method at one budget (the grid's own
    student, headline protocol, mean over evaluation runs): one colour per method
    (:func:`method_colours`), test solid, val dashed; the legend, outside the axes, lists each
    method once and the two line styles once."""
    series: dict[str, dict[tuple[str, int], list[float]]] = {}
    kinds: dict[str, str] = {}
    for rec in records:
        if rec.dataset != dataset or (rec.budget is not None and rec.budget != budget):
            continue
        for seed in rec.per_seed:
            for point in seed.get("curve") or []:
                series.setdefault(rec.method, {}).setdefault((point["split"], int(point["epoch"])), []).append(
                    float(point["mean"]))
        kinds[rec.method] = rec.inferred_kind()
    if not any(kinds.get(m) != "reference" for m in series):
        raise ValueError(f"no evaluation curves for {dataset!r} at {budget} pairs (run with evaluation.eval_every)")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    order = [m for m in method_order(pd.DataFrame({"method": list(kinds), "kind": list(kinds.values())}))
             if m in series] + [m for m in series if kinds[m] == "reference"]
    colours = method_colours(order)
    for method in order:
        colour = colours.get(method, FULL_COLOUR)
        for split, style in SPLIT_STYLES:
            points = sorted((e, sum(v) / len(v)) for (s, e), v in series[method].items() if s == split)
            if points:
                ax.plot([e for e, _ in points], [v for _, v in points], linestyle=style, color=colour,
                        marker="o" if style == "-" else None, markersize=3, linewidth=1.6 if style == "-" else 1.0,
                        label=f"{method} ({split})")
    splits = [(s, st) for s, st in SPLIT_STYLES if any(k[0] == s for m in order for k in series[m])]
    handles = [Line2D([], [], color=colours.get(m, FULL_COLOUR), linewidth=2.5, label=m) for m in order]
    handles += [Line2D([], [], color="0.2", linestyle=st, linewidth=1.4, label=f"{s} split") for s, st in splits]
    ax.set_xlabel("evaluation epoch")
    ax.set_ylabel("mean recall (%)")
    ax.set_title(f"{dataset}, {budget} pairs: recall during evaluation training")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax, handles, ncol=2 if len(handles) > 24 else 1)
    return save_figure(fig, path, dpi=130)
