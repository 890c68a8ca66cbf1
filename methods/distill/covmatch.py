"""covmatch: match the image-text cross-covariance of real and synthetic pairs (no unrolled steps).

CovMatch ("CovMatch: Cross-Covariance Guided Multimodal Dataset Distillation with Trainable Text
Encoder", Lee and Chung, NeurIPS 2025, arXiv 2510.18583; code Yongalls/CovMatch, which was not
readable here). For a linear contrastive model (image and text projections G_v, G_l on encoder
features) the loss depends on the data only through the cross-covariance of the paired
features, so a synthetic set whose cross-covariance equals the real one trains the same
projections: the bi-level problem reduces to a closed-form moment match, cheap enough to let
both towers train. Every iteration here:

1. draws fresh heads from the iteration's seed (the paper's Algorithm 1: "randomly initialise
   projection layers G_v, G_l" every round, the encoders reset to their pretrained weights); the
   tower is the student's (pretrained, or the method seed's initialisation), and a frozen one
   gives every real image the same features, computed once;
2. embeds a real batch (``batch_real`` pairs) and the whole synthetic set through the heads
   (L2-normalised: what the contrastive loss sees) into z_v, z_l;
3. minimises

       L = || C(real) - C(syn) ||_F^2 + w_intra * (|| mu_v(real) - mu_v(syn) ||^2 + || mu_l(real) - mu_l(syn) ||^2),
       C = (1/n) sum_i (z_v,i - mu_v)(z_l,i - mu_l)^T        (``center: false``: without the means)

   over the synthetic images and text vectors (SGD with momentum). The intra-modal term keeps
   each modality's feature distribution (its mean) where the real one is; the paper's exact
   regulariser was not readable here (docs/methods.md).

Every random choice of iteration ``it`` (student, real batch) comes from a generator of (seed, it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from bench.data.pairs import PairSet, normalize_images
from bench.methods_api import Method, MethodContext, MethodOutput, check_budget
from bench.models.student import Student, embed_real_batch, functional_embed, tower_features
from bench.protocol.train import check_momentum
from bench.registry import register
from bench.trajectory_api import text_drift


@dataclass(frozen=True)
class CovMatchConfig:
    """``iterations`` of matching with ``batch_real`` real pairs each against the whole set;
    SGD on images (``lr_img``) and text vectors (``lr_txt``) with ``momentum``; the
    intra-modal weight ``w_intra``; ``center``: centred (co)variances (false: raw second
    moments)."""

    iterations: int = 200
    batch_real: int = 256
    lr_img: float = 30000.0
    lr_txt: float = 300.0
    momentum: float = 0.5
    w_intra: float = 0.1
    center: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.batch_real < 2:
            raise ValueError(f"batch_real must be >= 2 (a covariance needs pairs of samples), got {self.batch_real}")
        for name in ("lr_img", "lr_txt", "w_intra"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_momentum(self.momentum)


def cross_covariance(z_img: torch.Tensor, z_txt: torch.Tensor, center: bool = True) -> torch.Tensor:
    """(d_v, d_l): the mean over pairs of z_img z_txt^T, each side centred on its mean when ``center``."""
    if center:
        z_img, z_txt = z_img - z_img.mean(dim=0), z_txt - z_txt.mean(dim=0)
    return z_img.T @ z_txt / z_img.shape[0]


HEADS = ("image_projection.", "text_head.")


def fresh_heads(template: Student, seed: int) -> dict[str, torch.Tensor]:
    """The parameters of ``template``'s heads re-initialised from ``seed`` alone (on the CPU,
    by each layer's own initialiser: what a fresh student's heads would be); the tower is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for head in (template.image_projection, template.text_head):
            for module in head.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return {k: v.detach().clone() for k, v in template.named_parameters() if k.startswith(HEADS)}


def covmatch_loss(real: tuple[torch.Tensor, torch.Tensor], syn: tuple[torch.Tensor, torch.Tensor],
                  w_intra: float, center: bool = True) -> dict[str, torch.Tensor]:
    """The two terms (``cross``, the weighted ``intra``) and their sum ``total``; ``real`` and
    ``syn`` are (image, text) embeddings."""
    cross = (cross_covariance(*real, center) - cross_covariance(*syn, center)).square().sum()
    intra = sum((r.mean(dim=0) - s.mean(dim=0)).square().sum() for r, s in zip(real, syn))
    terms = {"cross": cross, "intra": w_intra * intra}
    return {**terms, "total": terms["cross"] + terms["intra"]}


@register("covmatch", "distillation",
          "CovMatch: match the real and synthetic image-text cross-covariance under random heads")
class CovMatch(Method):
    Params = CovMatchConfig
    version = 1
    # Around the entry's recipe: iterations (half to three times), both learning rates a factor
    # of ~3 either way (on the embedded val at 100 pairs 3e4 / 300 beat 3e3 / 30 by 3.3 points
    # and 1e5 / 1e3 by 1.2), and the intra-modal weight over two decades (it trades the cross
    # term against each side's mean; 0.1 was chosen there).
    default_search = {"iterations": {"times": [0.5, 1, 2, 3]}, "lr_img": {"times": [0.3, 1, 3]},
                      "lr_txt": {"times": [0.3, 1, 3]}, "w_intra": [0.1, 1.0, 10.0]}

    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        cfg: CovMatchConfig = self.params
        check_budget(budget, ctx.n_pairs)
        if budget < 2:
            raise ValueError(f"covmatch needs a budget of at least 2 pairs (a covariance), got {budget}")
        init = np.sort(np.random.default_rng(seed).choice(ctx.n_pairs, size=budget, replace=False))
        start = ctx.real_subset(init)
        device = ctx.device
        images = normalize_images(start.images[start.image_index]).float().to(device).requires_grad_(True)
        texts = start.text_emb.float().to(device).requires_grad_(True)
        opt = torch.optim.SGD([{"params": [images], "lr": cfg.lr_img}, {"params": [texts], "lr": cfg.lr_txt}],
                              momentum=cfg.momentum)
        real = ctx.data.train_pairs()
        template = ctx.student(seed).eval()  # on the CPU: its heads are re-drawn there every iteration
        heads = copy.deepcopy(template).to(device).eval()
        tower = {k: v.detach() for k, v in heads.named_parameters() if not k.startswith(HEADS)}
        real_features = tower_features(heads, real.images, device) if heads.frozen_tower else None
        n_real = min(cfg.batch_real, len(real))
        losses: list[dict[str, float]] = []
        for it in range(cfg.iterations):
            rng = np.random.default_rng([seed, it])
            params = {**tower, **{k: v.to(device) for k, v in fresh_heads(template, int(rng.integers(2**31))).items()}}
            real_idx = torch.from_numpy(rng.choice(len(real), size=n_real, replace=False))
            real_emb = embed_real_batch(heads, params, real, real_idx, real_features, device)
            syn_emb = functional_embed(heads, params, images, texts)
            terms = covmatch_loss(real_emb, syn_emb, cfg.w_intra, cfg.center)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            losses.append({k: round(float(v.detach()), 8) for k, v in terms.items()})
        images, texts = images.detach().cpu(), texts.detach().cpu()
        return MethodOutput(
            pairs=PairSet.synthetic(images, texts),
            info={"loss": [step["total"] for step in losses], "final_loss_terms": losses[-1],
                  "init_indices": init.tolist(), "text_drift": text_drift(texts, ctx.data.text_emb["train"], init)},
        )
