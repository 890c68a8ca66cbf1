"""Plots of a grid's results: recall against budget (PNG, atomic writes).

Figures are saved with :func:`bench.grid.pictures.save_figure` (the Agg backend, set there
before pyplot loads, so reports work on headless cluster nodes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.ticker import FixedLocator, NullLocator

from bench.grid.pictures import plt, save_figure
from bench.grid.record import CellRecord
from bench.reports.records import FULL, SOURCE, block_of, blocks, method_order


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
    for i, method in enumerate(method_order(data)):
        rows = data[(data["method"] == method) & (data["budget"] != FULL)]
        rows = rows.assign(budget=rows["budget"].astype(int)).sort_values("budget")
        distill = rows["kind"].iloc[0] not in ("coreset", "reference")
        ax.errorbar(rows["budget"], rows["mean"], yerr=rows["std"], label=method, capsize=3,
                    marker="s" if distill else "o", linewidth=2.0 if distill else 1.4, color=f"C{i % 10}")
    for j, row in enumerate(data[data["budget"] == FULL].itertuples()):
        color = "0.35" if j == 0 else f"C{(j + 5) % 10}"
        label = f"{row.method} ({row.mean:.1f})"
        ax.axhline(row.mean, linestyle="--", color=color, linewidth=1.2, label=label)
        ax.annotate(label, xy=(0.99, row.mean), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=8, color=color, xytext=(0, 2), textcoords="offset points")
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
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path, dpi=130)


def plot_curves(records: Sequence[CellRecord], dataset: str, budget: int, path: str | os.PathLike[str]) -> Path:
    """Mean recall against evaluation epoch for every method at one budget (the grid's own
    student, headline protocol, mean over evaluation runs): test solid, val dashed; the full
    reference, when it has a curve, in grey."""
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
    for i, method in enumerate(order):
        colour = "0.45" if kinds[method] == "reference" else f"C{i % 10}"
        for split, style in (("test", "-"), ("val", "--")):
            points = sorted((e, sum(v) / len(v)) for (s, e), v in series[method].items() if s == split)
            if points:
                ax.plot([e for e, _ in points], [v for _, v in points], linestyle=style, color=colour,
                        marker="o" if style == "-" else None, markersize=3, linewidth=1.6 if style == "-" else 1.0,
                        label=f"{method} ({split})")
    ax.set_xlabel("evaluation epoch")
    ax.set_ylabel("mean recall (%)")
    ax.set_title(f"{dataset}, {budget} pairs: recall during evaluation training (test solid, val dashed)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    return save_figure(fig, path, dpi=130)
