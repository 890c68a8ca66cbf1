"""The pictures of one cell: the first pairs of the set it produced, with their captions, and
(for distillation) its matching-loss curve. Written by the cell itself, next to its record."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.data.text_encoder import nearest_captions
from bench.reports.plots import plot_matching_loss, save_pair_grid

if TYPE_CHECKING:
    from bench.data.datasets import PreparedDataset
    from bench.methods_api import MethodOutput
    from bench.store import ResultStore

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
