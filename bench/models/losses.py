"""The contrastive loss every student trains with, with hard or soft targets.

Hard targets (the default): symmetric InfoNCE with the pairs of the batch as positives, the
CLIP objective. Soft targets: a method may supply, for each pair of its set, how similar its
image should be to every caption (LoRS learns such a matrix); the loss then takes the block of
that matrix that belongs to the batch, in one of two forms (after LoRS, Xu et al., ICML 2024):

* ``infonce``: symmetric cross-entropy of the softmax over a row (a column) of logits, each
  entry weighted by its target (as LoRS's code does; not renormalised to a distribution,
  which would let many small off-diagonal targets outweigh the diagonal one: we measured a
  set whose targets were within 0.06 of the identity fall from 17.3 to 8.2 mean val recall
  that way), negative targets counting as 0; the identity gives exactly the hard loss;
* ``wbce``: binary cross-entropy of sigmoid(logit) against each target clipped to [0, 1],
  averaged separately over the "positive" entries (target > 0.5) and the others and then over
  the two, so that the n - 1 negatives of a row do not drown its positive.

A learned similarity matrix is free to leave [0, 1] (LoRS's S = diag + low-rank part has no
bound, and its code uses the raw values as weights). We measured what that does here: a
negative target turns the cross-entropy into a reward for pushing that logit down without
limit, and students trained on such sets diverged to NaN. Clipping keeps both losses bounded
below; it changes nothing for targets already in range. ``clip=False`` (``SoftTargets.clip``)
uses the targets as they are, LoRS's own rule, for measuring what the clipping changes
(``benchmarks/ablate_soft_targets.py --unclipped``); no method trains that way.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

TargetLoss = Literal["infonce", "wbce"]


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float,
                     targets: torch.Tensor | None = None, kind: TargetLoss = "infonce",
                     clip: bool = True) -> torch.Tensor:
    """The loss of a batch of aligned (image i, text i) pairs; ``targets`` (b, b): soft targets
    of image i with text j (None: the identity). ``clip``: negative targets count as 0 (and,
    for 'wbce', targets above 1 as 1); False: the targets are used unclipped, as LoRS's code
    does (unbounded below when a target is negative)."""
    logits = logit_scale * image_emb @ text_emb.T
    if targets is None and kind == "infonce":
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    if targets is None:
        targets = torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
    targets = targets.to(logits.dtype)
    if kind == "infonce":
        weights = targets.clamp_min(0.0) if clip else targets
        rows = -(weights * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        cols = -(weights.T * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
        return 0.5 * (rows + cols)
    if kind == "wbce":
        if clip:
            targets = targets.clamp(0.0, 1.0)
        per_pair = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))
        positive = (targets > 0.5).to(logits.dtype)
        pos = (per_pair * positive).sum() / positive.sum().clamp_min(1.0)
        neg = (per_pair * (1 - positive)).sum() / (1 - positive).sum().clamp_min(1.0)
        return 0.5 * (pos + neg)
    raise ValueError(f"unknown contrastive loss {kind!r}; expected 'infonce' or 'wbce'")
