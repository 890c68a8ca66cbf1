"""Recall-vs-budget plot and image grids of distilled / selected pairs (PNG, atomic writes).

matplotlib runs on the Agg backend (set here, before pyplot loads) so reports work on headless
cluster nodes; figures are closed after saving so a long report run does not accumulate them.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from bench.data.pairs import denormalize_images  # noqa: E402
from bench.io import write_atomic  # noqa: E402
from bench.reports.records import FULL, method_order  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike[str], dpi: int) -> Path:
    try:  # the temp name ends in .tmp, so the format must be explicit
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_recall_vs_budget(
    agg: pd.DataFrame, dataset: str, path: str | os.PathLike[str], metric: str = "mean"
) -> Path:
    """One line per method (error bars = pooled std) over budgets; full data as a dashed line.

    The x axis is logarithmic when budgets span more than 4x (paper grids go 100..1000), with
    ticks exactly at the budgets so each point can be read off.
    """
    data = agg[(agg["dataset"] == dataset) & (agg["metric"] == metric)]
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
    return _save(fig, path, dpi=130)


def _to_display(images: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) uint8 or normalised float -> (n, H, W, 3) floats in [0, 1]."""
    images = torch.as_tensor(images).detach().cpu()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (n, 3, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        shown = images.float() / 255.0
    elif images.is_floating_point():
        shown = denormalize_images(images.float())
    else:
        raise ValueError(f"images must be uint8 or float, got {images.dtype}")
    return shown.permute(0, 2, 3, 1).numpy()


def save_pair_grid(
    images: torch.Tensor,
    captions: Sequence[str],
    path: str | os.PathLike[str],
    title: str,
    n: int = 16,
    cols: int = 4,
) -> Path:
    """The first ``n`` pairs as tiles (image above its wrapped caption) under a title.

    Float images are taken to be in the model-input space (normalised), as distilled images
    are; uint8 images are raw pixels, as coreset pairs are stored.
    """
    count = min(n, len(captions), int(images.shape[0]))
    if count == 0:
        raise ValueError("save_pair_grid needs at least one image with a caption")
    shown = _to_display(images[:count])
    cols = max(1, min(cols, count))
    rows = math.ceil(count / cols)
    wrap, max_lines = 28, 4
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.3 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        ax.imshow(shown[k], interpolation="nearest")
        lines = textwrap.wrap(str(captions[k]), width=wrap) or [""]
        if len(lines) > max_lines:
            lines = lines[:max_lines]
            lines[-1] = lines[-1][: wrap - 1].rstrip() + "\u2026"
        ax.text(0.5, -0.04, "\n".join(lines), transform=ax.transAxes, ha="center", va="top", fontsize=8)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.subplots_adjust(hspace=0.55)
    return _save(fig, path, dpi=110)


def plot_matching_loss(losses: Sequence[float], path: str | os.PathLike[str], title: str) -> Path:
    """The trajectory-matching loss per iteration (thin) with its moving average (thick).

    The window is about a tenth of the run (at least 1, at most 50 iterations); the average is
    drawn only where the window is full, at the window's last iteration. The y axis is
    logarithmic when the losses span more than two decades (early spikes of a diverging step
    size otherwise flatten the rest of the curve).
    """
    values = np.asarray(list(losses), dtype=float)
    if values.size == 0:
        raise ValueError("plot_matching_loss needs at least one loss value")
    iterations = np.arange(1, values.size + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(iterations, values, linewidth=0.8, alpha=0.45, color="C0", label="loss",
            marker="o" if values.size < 30 else None, markersize=3)
    window = int(min(50, max(1, values.size // 10)))
    finite = values[np.isfinite(values)]
    if window > 1 and finite.size == values.size:
        average = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(iterations[window - 1:], average, linewidth=2.0, color="C1", label=f"moving average ({window})")
    positive = finite[finite > 0]
    if positive.size == finite.size and positive.size and positive.max() > 100 * positive.min():
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("matching loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path, dpi=110)
