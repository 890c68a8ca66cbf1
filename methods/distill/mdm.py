"""mdm: multimodal distribution matching under a merged teacher (no unrolled steps).

MDM ("Multimodal Distribution Matching for Vision-Language Dataset Distillation", Jeong, Kwon,
Kim, Yoon, CVPR 2026, arXiv 2605.23482; code andyj1/mdm, ``distill_mdm.py``). Three parts:

1. **Joint-space initialisation**: k-means with K = budget on every training pair's joint
   feature (the proxy's L2-normalised image ++ text embedding), and in each cluster the real
   pair nearest its centroid.
2. **A mixed teacher**, drawn anew every iteration: two expert checkpoints (expert, epoch) with
   epochs in [min_epoch, max_epoch] (two different epochs when both come from one expert),
   merged tensor by tensor relative to the anchor w0 (the first expert's epoch-0 parameters)
   with the Model-Stock ratio of their task vectors tau_i = w_i - w0,

       r = k c / ((k - 1) c + 1),  k = 2,  c = cos(tau_1, tau_2)
       w = w0 + merge_alpha * r * ((w_1 + w_2) / 2 - w0).

   The teacher is fixed (eval mode, no gradient into it).
3. **The loss** of a synthetic batch under the teacher against a real batch drawn this
   iteration: symmetric InfoNCE of the synthetic pairs plus the geodesic kernel energy (an MMD
   with the kernel exp(-arccos(<a, b>)^2 / (2 sigma^2)) on the unit sphere) between the real
   and the synthetic agreement vectors normalize(z_img + z_txt), and between their discrepancy
   vectors normalize(z_img - z_txt). Its gradient moves the synthetic images and text vectors
   (SGD with momentum, the joint gradient norm clipped).

Every random choice of iteration ``it`` (teacher, real batch, synthetic batch) comes from a
generator of (seed, it); the k-means from ``seed``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from torch.nn import functional as F

from bench.data.pairs import PairSet
from bench.distill.experts import TrajectoryBuffer
from bench.methods_api import Method, MethodContext, MethodOutput, check_budget
from bench.models.losses import contrastive_loss
from bench.models.student import embed_real_batch, functional_embed, tower_features
from bench.protocol.train import check_momentum
from bench.registry import register
from bench.trajectory_api import text_drift

EPS = 1e-12
COS_LIMIT = 1 - 1e-6  # arccos has an infinite slope at +-1


@dataclass(frozen=True)
class MdmConfig:
    """``iterations`` of distribution matching with ``batch_syn`` synthetic and ``batch_real``
    real pairs each; SGD on images (``lr_img``) and text vectors (``lr_txt``) with
    ``momentum``, their joint gradient norm clipped at ``grad_clip`` (None: never).
    The loss: ``w_nce`` x InfoNCE at ``logit_scale`` + ``w_agree`` x GKE of the agreement
    vectors (bandwidth ``sigma_agree``) + ``w_disc`` x GKE of the discrepancy vectors
    (``sigma_disc``). The teacher: checkpoints of epochs ``min_epoch`` .. ``max_epoch`` (None:
    the last recorded expert epoch), ``merge_alpha`` scaling the merge; ``same_expert`` draws
    both checkpoints from one expert (whose epoch 0 is then the anchor of both task vectors;
    the authors draw the two experts independently)."""

    iterations: int = 200
    batch_syn: int = 64
    batch_real: int = 256
    lr_img: float = 1000.0
    lr_txt: float = 1000.0
    momentum: float = 0.5
    grad_clip: float | None = 1.0
    logit_scale: float = 1 / 0.07
    w_nce: float = 1.0
    w_agree: float = 0.8
    w_disc: float = 0.8
    sigma_agree: float = 0.5
    sigma_disc: float = 0.5
    merge_alpha: float = 0.5
    min_epoch: int = 1
    max_epoch: int | None = None
    same_expert: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.batch_syn < 2 or self.batch_real < 2:
            raise ValueError(f"batch_syn and batch_real must be >= 2 (a contrastive batch and a kernel energy need "
                             f"pairs of samples), got {self.batch_syn} and {self.batch_real}")
        for name in ("lr_img", "lr_txt", "w_nce", "w_agree", "w_disc"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_momentum(self.momentum)
        for name in ("logit_scale", "sigma_agree", "sigma_disc"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 (or null for no clipping), got {self.grad_clip}")
        if not self.merge_alpha >= 0:
            raise ValueError(f"merge_alpha must be >= 0, got {self.merge_alpha}")
        if self.min_epoch < 1 or (self.max_epoch is not None and self.max_epoch < self.min_epoch):
            raise ValueError(f"epochs to merge must satisfy 1 <= min_epoch <= max_epoch, got min_epoch "
                             f"{self.min_epoch}, max_epoch {self.max_epoch}")


# ----------------------------------------------------------------------------- initialisation

def kmeans_init(features: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pair nearest each of ``k`` k-means centroids among its cluster's members, with the
    centroids and the cluster labels. Lloyd's k-means (scikit-learn) from k training points
    drawn with ``seed`` as the initial centroids, one run: deterministic. (k-means++ seeding
    took 5-10x longer than the whole Lloyd run at k = 500 on the embedded benchmark.) It runs on
    torch's thread count, i.e. the cell's: OpenMP's default of every core crawled when the
    cores were shared. A cluster left empty (only when fewer than k distinct features exist)
    takes the nearest pair no cluster chose, so the k pairs are always distinct."""
    features = np.asarray(features, dtype=np.float64)
    if not 1 <= k <= len(features):
        raise ValueError(f"k-means needs 1 <= k <= {len(features)} pairs, got k = {k}")
    with threadpool_limits(torch.get_num_threads()):
        km = KMeans(n_clusters=k, init="random", n_init=1, random_state=seed).fit(features.astype(np.float32))
    centers, labels = km.cluster_centers_.astype(np.float64), km.labels_
    picks = np.full(k, -1, dtype=np.int64)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if members.size:
            picks[c] = members[np.argmin(((features[members] - centers[c]) ** 2).sum(axis=1))]
    chosen = np.zeros(len(features), dtype=bool)
    chosen[picks[picks >= 0]] = True
    for c in np.flatnonzero(picks < 0):
        dist = ((features - centers[c]) ** 2).sum(axis=1)
        dist[chosen] = np.inf
        picks[c] = int(np.argmin(dist))
        chosen[picks[c]] = True
    return picks, centers, labels


# ----------------------------------------------------------------------------- the mixed teacher

def merge_ratio(cos: float, k: int = 2) -> float:
    """The interpolation ratio of k models whose task vectors have cosine ``cos`` (Model Stock)."""
    return k * cos / ((k - 1) * cos + 1 + EPS)


def task_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two task vectors (0 when either is zero: nothing moved, nothing to merge)."""
    a, b = a.double().flatten(), b.double().flatten()
    return float(torch.clamp(a @ b / (a.norm() * b.norm() + EPS), -1.0, 1.0))


def merge_checkpoints(anchor: Mapping[str, torch.Tensor], first: Mapping[str, torch.Tensor],
                      second: Mapping[str, torch.Tensor], alpha: float) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Per tensor: anchor + alpha * r * (mean of the two - anchor), r = merge_ratio(cos of the
    task vectors); the merged tensors and the ratios."""
    merged, ratios = {}, []
    for name, w0 in anchor.items():
        r = merge_ratio(task_cosine(first[name] - w0, second[name] - w0))
        merged[name] = w0 + alpha * r * ((first[name] + second[name]) / 2 - w0)
        ratios.append(r)
    return merged, ratios


def draw_checkpoints(rng: np.random.Generator, n_experts: int, min_epoch: int, max_epoch: int,
                     same_expert: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two (expert, epoch) checkpoints: epochs uniform in [min_epoch, max_epoch]; a second
    checkpoint of the same expert takes another epoch."""
    first = (int(rng.integers(n_experts)), int(rng.integers(min_epoch, max_epoch + 1)))
    expert = first[0] if same_expert else int(rng.integers(n_experts))
    epochs = [e for e in range(min_epoch, max_epoch + 1) if expert != first[0] or e != first[1]]
    return first, (expert, int(rng.choice(epochs)))


def mixed_teacher(buffer: TrajectoryBuffer, rng: np.random.Generator, cfg: MdmConfig, max_epoch: int,
                  device: torch.device) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One draw of the teacher's trainable parameters (merged on ``device``) and its ratios."""
    (e1, p1), (e2, p2) = draw_checkpoints(rng, len(buffer), cfg.min_epoch, max_epoch, cfg.same_expert)
    anchor, first, second = ({k: v.to(device, torch.float32) for k, v in buffer.params(e, p).items()}
                             for e, p in ((e1, 0), (e1, p1), (e2, p2)))
    return merge_checkpoints(anchor, first, second, cfg.merge_alpha)


# ----------------------------------------------------------------------------- the loss

def geodesic_kernel(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """exp(-phi^2 / (2 sigma^2)), phi the angle between rows of ``a`` and rows of ``b``."""
    cos = (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).clamp(-COS_LIMIT, COS_LIMIT)
    return torch.exp(-torch.arccos(cos) ** 2 / (2 * sigma**2))


def _offdiagonal_mean(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def geodesic_kernel_energy(real: torch.Tensor, syn: torch.Tensor, sigma: float) -> torch.Tensor:
    """sqrt of the (unbiased: within-set means without the diagonal) squared MMD of the two sets
    under the geodesic kernel, clamped at 0 (the unbiased estimate can dip below it)."""
    mmd2 = (_offdiagonal_mean(geodesic_kernel(syn, syn, sigma)) + _offdiagonal_mean(geodesic_kernel(real, real, sigma))
            - 2 * geodesic_kernel(syn, real, sigma).mean())
    return torch.sqrt(mmd2.clamp_min(0) + EPS)


def agreement(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    return F.normalize(image_emb + text_emb, dim=1)


def discrepancy(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    return F.normalize(image_emb - text_emb, dim=1)


def mdm_loss(real: tuple[torch.Tensor, torch.Tensor], syn: tuple[torch.Tensor, torch.Tensor],
             cfg: MdmConfig) -> dict[str, torch.Tensor]:
    """The terms of the loss (weighted) and their sum under ``total``; ``real``/``syn`` are the
    teacher's normalised (image, text) embeddings of the two batches."""
    terms = {
        "nce": cfg.w_nce * contrastive_loss(syn[0], syn[1], cfg.logit_scale),
        "agree": cfg.w_agree * geodesic_kernel_energy(agreement(*real), agreement(*syn), cfg.sigma_agree),
        "disc": cfg.w_disc * geodesic_kernel_energy(discrepancy(*real), discrepancy(*syn), cfg.sigma_disc),
    }
    return {**terms, "total": terms["nce"] + terms["agree"] + terms["disc"]}


# ----------------------------------------------------------------------------- the method

def warn_clamped(cfg: MdmConfig, n_real: int, budget: int) -> None:
    """Batches larger than what they draw from are clamped (every real pair, or every
    synthetic pair, each iteration), not refused: say so once, so a ``batch_real: 100000`` is
    not read as having had an effect."""
    if cfg.batch_real > n_real:
        warnings.warn(f"mdm: batch_real {cfg.batch_real} is more than the {n_real} training pairs; using {n_real}",
                      stacklevel=2)
    if cfg.batch_syn > budget:
        warnings.warn(f"mdm: batch_syn {cfg.batch_syn} is more than the budget {budget}; using {budget}", stacklevel=2)


@register("mdm", "distillation", "MDM: k-means init, merged-expert teacher, geodesic distribution matching")
class Mdm(Method):
    Params = MdmConfig
    uses_proxy = True
    uses_experts = True
    version = 1
    # Around the entry's recipe: iterations (the embedded search chose 50 at 100 pairs and
    # 150 at 500, docs/recipes.md) and both learning rates a factor of ~3 either way.
    default_search = {"iterations": {"times": [0.5, 1, 2, 3]}, "lr_img": {"times": [0.3, 1, 3]},
                      "lr_txt": {"times": [0.3, 1, 3]}}

    @classmethod
    def expert_epochs_needed(cls, params: MdmConfig) -> int:
        """The last epoch a teacher checkpoint may come from (``max_epoch``; unset: every
        recorded one, of which there must be ``min_epoch``, and one more for two epochs of one
        expert), so the grid refuses too short experts when it loads."""
        if params.max_epoch is not None:
            return params.max_epoch
        return params.min_epoch + (1 if params.same_expert else 0)

    @classmethod
    def expert_epochs_reason(cls, params: MdmConfig) -> str:
        if params.max_epoch is not None:
            return f"max_epoch {params.max_epoch}"
        return f"min_epoch {params.min_epoch}" + (" + 1 for two epochs of one expert (same_expert)"
                                                  if params.same_expert else "")

    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        cfg: MdmConfig = self.params
        check_budget(budget, ctx.n_pairs)
        if budget < 2:
            raise ValueError(f"mdm needs a budget of at least 2 pairs (InfoNCE and the kernel energy compare "
                             f"pairs), got {budget}")
        buffer = ctx.experts()
        max_epoch = buffer.epochs if cfg.max_epoch is None else cfg.max_epoch
        if max_epoch > buffer.epochs:
            raise ValueError(f"max_epoch {max_epoch} exceeds the {buffer.epochs} recorded expert epochs "
                             "(raise experts.epochs)")
        if max_epoch == cfg.min_epoch and (cfg.same_expert or len(buffer) == 1):
            raise ValueError(f"two checkpoints of one expert need two epochs, but min_epoch = max_epoch = {max_epoch}")
        init, _, _ = kmeans_init(ctx.proxy_features(), budget, seed)
        device = ctx.device
        start = ctx.editable_subset(init, device)
        images, texts = start.images, start.texts
        opt = torch.optim.SGD([{"params": [images], "lr": cfg.lr_img}, {"params": [texts], "lr": cfg.lr_txt}],
                              momentum=cfg.momentum)

        teacher = ctx.student(seed).to(device).eval()
        real = ctx.data.train_pairs()
        # A frozen tower gives every real image the same features whatever the teacher: once.
        real_features = tower_features(teacher, real.images, device) if teacher.frozen_tower else None
        losses: list[dict[str, float]] = []
        ratios: list[float] = []
        warn_clamped(cfg, len(real), budget)
        for it in range(cfg.iterations):
            rng = np.random.default_rng([seed, it])
            params, r = mixed_teacher(buffer, rng, cfg, max_epoch, device)
            ratios += r
            real_idx = torch.from_numpy(rng.choice(len(real), size=min(cfg.batch_real, len(real)), replace=False))
            syn_idx = torch.from_numpy(rng.choice(budget, size=min(cfg.batch_syn, budget), replace=False)).to(device)
            real_emb = embed_real_batch(teacher, params, real, real_idx, real_features, device)
            syn_emb = functional_embed(teacher, params, images[syn_idx], texts[syn_idx])
            terms = mdm_loss(real_emb, syn_emb, cfg)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([images, texts], cfg.grad_clip)
            opt.step()
            losses.append({k: round(float(v.detach()), 6) for k, v in terms.items()})
        images, texts = images.detach().cpu(), texts.detach().cpu()
        return MethodOutput(
            pairs=PairSet.synthetic(images, texts),
            info={"loss": [step["total"] for step in losses], "final_loss_terms": losses[-1],
                  "init_indices": init.tolist(), "merge_ratio_mean": round(float(np.mean(ratios)), 6),
                  "expert_buffer_bytes": buffer.size_bytes(),
                  "text_drift": text_drift(texts, ctx.data.text_emb["train"], init)},
        )
