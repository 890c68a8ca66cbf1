"""el2n: the pairs the early proxy gets most wrong (EL2N, Paul et al., NeurIPS 2021, for pairs).

EL2N scores an example by the L2 norm of its error vector early in training, softmax output
minus one-hot target, and keeps the highest. A contrastive pair has no class, so its "classes"
are a fixed gallery of other pairs (:class:`bench.protocol.proxy.GalleryRows`, recorded by the
proxy after chosen early epochs): the image's softmax over its own caption and the gallery's
captions, and the caption's over its own image and the gallery's images, each against the
one-hot "its own partner", the two norms averaged. The paper averages over ten proxy
initialisations; here the average is over the recorded epochs asked for (one proxy per method
seed is what a cell gets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bench.methods_api import MethodContext
from bench.protocol.proxy import GalleryRows, ProxyConfig
from bench.registry import register
from methods.coresets._common import (
    CoresetMethod,
    proxy_rows,
    top,
)

#: Pairs per chunk of the score computation (a chunk x gallery float64 temporary or two).
_CHUNK = 16384


def check_epochs(epochs: tuple[int, ...] | None, key: str) -> None:
    """``epochs``: None or a non-empty list of distinct positive epochs; the error names ``key``."""
    if epochs is not None and (not epochs or min(epochs) < 1 or len(set(epochs)) != len(epochs)):
        raise ValueError(f"{key} must be null (every recorded epoch) or distinct epochs >= 1, got {list(epochs)}")


def gallery_problem(epochs: tuple[int, ...] | None, recorded: tuple[int, ...], key: str) -> str | None:
    """Why the proxy epochs ``epochs`` (None: every recorded one) cannot be read from a proxy
    recording ``recorded`` (``proxy.gallery_epochs``), or None; the message names ``key``."""
    if not recorded:
        return f"{key}: the EL2N scores read the proxy's gallery rows, but proxy.gallery_epochs is empty; record " \
               "at least one epoch there"
    missing = [e for e in epochs or () if e not in recorded]
    if missing:
        return (f"{key} {list(epochs or ())}: epoch {missing[0]} is not recorded by the proxy (proxy.gallery_epochs "
                f"{list(recorded)}); add it to proxy.gallery_epochs or read recorded epochs")
    return None


@dataclass(frozen=True)
class El2nParams:
    """epochs: the proxy epochs (recorded in ``proxy.gallery_epochs``) whose scores are averaged;
    None: every recorded one. keep: ``highest`` (the paper's rule: the hardest pairs) or
    ``lowest`` (the easiest, which Sorscher et al., NeurIPS 2022, find better when very little
    data is kept)."""

    epochs: tuple[int, ...] | None = None
    keep: Literal["highest", "lowest"] = "highest"

    def __post_init__(self) -> None:
        check_epochs(self.epochs, "epochs")
        if self.keep not in ("highest", "lowest"):
            raise ValueError(f"keep must be 'highest' or 'lowest', got {self.keep!r}")


def _direction(positive: np.ndarray, rows: np.ndarray, excluded: np.ndarray, logit_scale: float) -> np.ndarray:
    """||softmax(scale * [own, gallery without `excluded`]) - one_hot(own)||_2 per row."""
    logits = np.empty((rows.shape[0], rows.shape[1] + 1))
    logits[:, 0] = positive
    logits[:, 1:] = rows
    logits *= logit_scale
    logits[np.arange(rows.shape[0]), 1 + excluded] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    prob[:, 0] -= 1.0
    return np.sqrt(np.einsum("ij,ij->i", prob, prob))


def scores(positive: np.ndarray, image_to_text: np.ndarray, text_to_image: np.ndarray,
           excluded: np.ndarray, logit_scale: float) -> np.ndarray:
    """(n,) float64 EL2N of every pair at one epoch: the mean of the image->text and
    text->image error norms. positive (n,): cos(image_i, text_i); image_to_text,
    text_to_image (n, m): cosines to the gallery; excluded (n,): the gallery column that is
    not a negative of pair i (its own, or the spare; ``GalleryRows.excluded``)."""
    positive = np.asarray(positive, dtype=np.float64)
    n = positive.shape[0]
    if image_to_text.shape != text_to_image.shape or image_to_text.shape[0] != n or excluded.shape != (n,):
        raise ValueError(f"gallery rows do not fit: positive {positive.shape}, rows {image_to_text.shape} and "
                         f"{text_to_image.shape}, excluded {excluded.shape}")
    out = np.empty(n)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        out[part] = 0.5 * (_direction(positive[part], image_to_text[part], excluded[part], logit_scale)
                           + _direction(positive[part], text_to_image[part], excluded[part], logit_scale))
    return out


def proxy_scores(rows: GalleryRows, epochs: tuple[int, ...] | None) -> np.ndarray:
    """(n,) EL2N averaged over the recorded ``epochs`` (None: all of them)."""
    excluded = rows.excluded()
    per_epoch = [scores(rows.positive[e], rows.image_to_text[e], rows.text_to_image[e], excluded, rows.logit_scale)
                 for e in rows.epoch_rows(epochs)]
    return np.mean(per_epoch, axis=0)


def select(el2n_scores: np.ndarray, budget: int, rng: np.random.Generator,
           keep: Literal["highest", "lowest"] = "highest") -> np.ndarray:
    """Indices of the ``budget`` pairs of highest (or lowest) score, in that order; ties in a
    random order from ``rng``."""
    if keep not in ("highest", "lowest"):
        raise ValueError(f"keep must be 'highest' or 'lowest', got {keep!r}")
    return top(el2n_scores, budget, rng, descending=keep == "highest")


@register("el2n", "coreset", "EL2N for pairs: the largest early-proxy error norms against a fixed gallery")
class El2nCoreset(CoresetMethod):
    Params = El2nParams
    uses_proxy = True
    # Which end of the score to keep: the hardest pairs help large sets, the easiest small ones.
    default_search = {"keep": ["highest", "lowest"]}

    @classmethod
    def proxy_problem(cls, params: El2nParams, proxy: ProxyConfig) -> str | None:
        return gallery_problem(params.epochs, tuple(proxy.gallery_epochs), "epochs")

    def choose(self, ctx: MethodContext, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        rows = ctx.proxy().gallery_rows()
        pair_scores = proxy_rows(ctx, proxy_scores(rows, self.params.epochs), "EL2N scores")
        indices = select(pair_scores, budget, rng, self.params.keep)
        return indices, {"epochs": [rows.epochs[e] for e in rows.epoch_rows(self.params.epochs)],
                         "gallery_negatives": len(rows.gallery) - 1,
                         "score_selected_mean": float(pair_scores[indices].mean()),
                         "score_pool_mean": float(pair_scores.mean())}
