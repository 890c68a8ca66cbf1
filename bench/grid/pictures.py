"""The pictures of one cell: the first pairs of the set it produced, with their captions, and
(for distillation) its matching-loss curve. Written by the cell itself, next to its record.

matplotlib runs on the Agg backend (set here, before pyplot loads) so cells and reports draw on
headless cluster nodes; :func:`save_figure` is the one way a figure reaches the disk.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.core.io import write_atomic  # noqa: E402
from bench.data.pairs import denormalize_images  # noqa: E402
from bench.data.text_encoder import nearest_captions  # noqa: E402

if TYPE_CHECKING:
    from bench.data.datasets import PreparedDataset
    from bench.grid.store import ResultStore
    from bench.methods_api import MethodOutput

#: How many pairs the picture of a set shows.
N_SHOWN = 16


def display_captions(data: PreparedDataset, output: MethodOutput, n: int) -> list[str]:
    """Captions to show under the first ``n`` pairs: the real caption of a selected pair, or
    the nearest real training caption of a synthetic text vector (cosine), marked "≈"."""
    captions = data.train.captions
    if output.pairs.source_indices is not None:
        return [captions[int(i)] for i in output.pairs.source_indices[:n]]
    return [f"≈ {captions[int(i)]}" for i in nearest_captions(output.pairs.text_emb[:n], data.text_emb["train"])]


def strongest_targets(output: MethodOutput, n: int) -> list[str]:
    """For each of the first ``n`` pairs of a set with soft targets: the other pair whose text
    its image is most strongly targeted at, e.g. "+ #7 0.42" ("" without soft targets)."""
    targets = output.pairs.soft_targets
    if targets is None:
        return [""] * n
    matrix = targets.matrix.detach().float().clone()
    matrix.fill_diagonal_(float("-inf"))
    if matrix.shape[0] < 2:
        return [""] * n
    values, columns = matrix[:n].max(dim=1)
    return [f"+ #{int(j)} {float(v):.2f}" for v, j in zip(values, columns)]


def write_pictures(store: ResultStore, cell_id: str, data: PreparedDataset, output: MethodOutput) -> None:
    """``pictures/<cell>.png`` and, when the method reports ``matching_loss``, ``<cell>_loss.png``.
    A set with soft targets shows, under each pair, its strongest off-diagonal target."""
    n = min(N_SHOWN, len(output.pairs))
    images = output.pairs.images[output.pairs.image_index[:n]]
    captions = [f"{c} [{t}]" if t else c for c, t in zip(display_captions(data, output, n), strongest_targets(output, n))]
    save_pair_grid(images, captions, store.picture_path(cell_id), title=cell_id, n=n)
    if "matching_loss" in output.info:
        plot_matching_loss(output.info["matching_loss"], store.picture_path(cell_id, "loss"),
                           title=f"{cell_id}: matching loss")


def save_figure(fig: plt.Figure, path: str | os.PathLike[str], dpi: int) -> Path:
    """Write ``fig`` as a PNG atomically and close it (a long run does not accumulate figures)."""
    try:  # the temp name ends in .tmp, so the format must be explicit
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


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
    return save_figure(fig, path, dpi=110)


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
    return save_figure(fig, path, dpi=110)
