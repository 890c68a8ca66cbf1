"""ptm-st: LoRS-style matching with phased teachers, shortcut trajectories and an EMA of the set.

PTM-ST ("Multimodal Dataset Distillation via Phased Teacher Models", Guo, Zhao et al., ICLR 2026,
arXiv 2603.25388; code Previsior/PTM-ST: ``distill_ptm-st.py``, ``convexify.py``,
``model_ema.py``, ``sh/distill.sh``). Three changes to LoRS (:mod:`methods.distill.lors`):

1. **Phased teachers.** The budget is split into phases (the authors' 500 pairs: 200 + 299
   pairs, ``--num_queries 200 299``); phase k distills its own pairs, from its own real
   starting pairs, against expert segments whose start epoch is drawn from its own window
   [phase_min_start[k], phase_max_start[k]) (the authors: [0, 2) then [1, 3)), so later phases
   learn from later teachers. Each phase has its own LoRS similarity and step sizes.
2. **Shortcut trajectories.** Each expert's epochs 0..E (E = ``shortcut_ends[k]``; the authors'
   ``convexified_0_6`` / ``_0_8`` buffers keep epochs 0..5 / 0..7) are replaced, tensor by
   tensor ("layer-wise"), by points on the straight line from epoch 0 to epoch E,

       theta_l(t) = (1 - beta_l(t)) theta_l(0) + beta_l(t) theta_l(E),
       beta_l(t)  = sum_{p < t} ||theta_l(p+1) - theta_l(p)|| / sum_{p < E} ||theta_l(p+1) - theta_l(p)||

   (0 where a tensor never moved): the path is straightened and each tensor advances along it
   as far as it had travelled along the real one. Matching then reads start and target from
   the shortcut trajectory.
3. **EMA of the set.** After every update an exponential moving average (decay ``ema_decay``,
   0.99 in every script) of the images, text vectors, similarity parameters and step sizes is
   kept; a phase's result is the average, not the last iterate.

The phases' sets are concatenated into one set of ``budget`` pairs; its soft targets are the
block-diagonal of the phases' similarity matrices, its learned step sizes the last phase's
(docs/methods.md lists what differs from the authors' sequential evaluation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from bench.data.datasets import PreparedDataset
from bench.data.pairs import PairSet, SoftTargets
from bench.distill.matching import LearnedTensor, MatchingState, TrajectoryMatcher, run_key
from bench.methods_api import MethodContext, MethodOutput, check_budget
from bench.protocol.augment import Augmentation
from bench.registry import register
from bench.trajectory_api import TrajectoryMatching, text_drift
from methods.distill.lors import Lors, LorsConfig, similarity

#: The learned tensors the EMA follows (everything the authors' ModelEmaV2 is given).
EMA_OF = ("images", "texts", "sim_diag", "sim_left", "sim_right", "lrs")


@dataclass(frozen=True)
class PtmStConfig(LorsConfig):
    """LoRS's parameters (``iterations`` is per phase, as the authors' ``--Iteration 2000
    2000``; ``min_start_epoch`` / ``max_start_epoch`` are replaced by each phase's window)
    plus the phases: ``phase_fractions`` of the budget (summing to 1; the last phase takes
    what rounding leaves), each phase's start-epoch window ``phase_min_start`` ..
    ``phase_max_start`` (exclusive) and the last epoch ``shortcut_ends`` of its shortcut
    segment; ``shortcut: false`` matches the recorded trajectories instead (the ablation);
    ``ema_decay`` in [0, 1) (0: the last iterate)."""

    phase_fractions: tuple[float, ...] = (0.4, 0.6)
    phase_min_start: tuple[int, ...] = (0, 1)
    phase_max_start: tuple[int, ...] = (2, 3)
    shortcut_ends: tuple[int, ...] = (5, 7)
    shortcut: bool = True
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.phase_fractions)
        if n < 1 or any(len(t) != n for t in (self.phase_min_start, self.phase_max_start, self.shortcut_ends)):
            raise ValueError(f"phase_fractions, phase_min_start, phase_max_start and shortcut_ends must have one entry "
                             f"per phase (at least one), got {len(self.phase_fractions)}, {len(self.phase_min_start)}, "
                             f"{len(self.phase_max_start)} and {len(self.shortcut_ends)}")
        if any(not f > 0 for f in self.phase_fractions) or abs(sum(self.phase_fractions) - 1) > 1e-6:
            raise ValueError(f"phase_fractions must be > 0 and sum to 1, got {list(self.phase_fractions)}")
        for k, (lo, hi, end) in enumerate(zip(self.phase_min_start, self.phase_max_start, self.shortcut_ends)):
            if not 0 <= lo < hi:
                raise ValueError(f"phase {k}: the start window must satisfy 0 <= phase_min_start < phase_max_start, "
                                 f"got [{lo}, {hi})")
            if self.shortcut and end < hi - 1 + self.expert_epochs:
                raise ValueError(f"phase {k}: shortcut_ends {end} must reach the latest target epoch "
                                 f"{hi - 1 + self.expert_epochs} (phase_max_start - 1 + expert_epochs)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.text_start_range is not None:
            raise ValueError("text_min_start_epoch / text_max_start_epoch are not supported by ptm-st (each phase has "
                             "one start window, phase_min_start .. phase_max_start, for both sides)")
        if self.snapshots:
            raise ValueError("ptm-st keeps no snapshots (a chain of phases stopped early is no shorter run's result)")

    def phase(self, k: int) -> PtmStConfig:
        """The matching parameters of phase ``k``: its start window, no snapshots."""
        return replace(self, min_start_epoch=self.phase_min_start[k], max_start_epoch=self.phase_max_start[k],
                       snapshots=())

    @property
    def last_epoch(self) -> int:
        reads = [hi - 1 + self.expert_epochs for hi in self.phase_max_start]
        if self.shortcut:
            reads += list(self.shortcut_ends)
        return max(reads)


def phase_sizes(budget: int, fractions: tuple[float, ...]) -> list[int]:
    """Pairs per phase: floor(fraction x budget), the last phase taking the rest."""
    sizes = [int(np.floor(f * budget)) for f in fractions[:-1]]
    return sizes + [budget - sum(sizes)]


# ----------------------------------------------------------------------------- shortcut trajectories

def shortcut_betas(trajectory: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per tensor, beta(t) for t = 0..E: the path length travelled up to epoch t over the whole
    path length of ``trajectory`` (epochs 0..E); 0 everywhere for a tensor that never moved."""
    betas = {}
    for name in trajectory[0]:
        steps = torch.stack([(b[name].double() - a[name].double()).norm() for a, b in zip(trajectory, trajectory[1:])])
        total = steps.sum()
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), steps.cumsum(0)])
        betas[name] = cum / total if total > 0 else torch.zeros_like(cum)
    return betas


def shortcut_point(first: Mapping[str, torch.Tensor], last: Mapping[str, torch.Tensor],
                   betas: Mapping[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
    """The shortcut trajectory at ``epoch``: (1 - beta) first + beta last, tensor by tensor."""
    out = {}
    for name, w0 in first.items():
        b = float(betas[name][epoch])
        out[name] = ((1 - b) * w0.double() + b * last[name].double()).to(w0.dtype)
    return out


class ShortcutTrajectories:
    """An expert buffer whose epochs 0..``end`` are read from the shortcut trajectory (later
    epochs as recorded). Each expert's segment is read once and kept as its two ends and betas."""

    def __init__(self, buffer, end: int) -> None:  # noqa: ANN001
        if end > buffer.epochs:
            raise ValueError(f"shortcut_ends {end} exceeds the {buffer.epochs} recorded expert epochs "
                             "(raise experts.epochs)")
        self.buffer, self.end, self.epochs = buffer, end, buffer.epochs
        self.key = f"{getattr(buffer, 'key', '')}-shortcut-0-{end}"
        self._segments: dict[int, tuple[dict, dict, dict]] = {}

    def __len__(self) -> int:
        return len(self.buffer)

    def params(self, expert: int, epoch: int) -> dict[str, torch.Tensor]:
        if epoch > self.end:
            return self.buffer.params(expert, epoch)
        if expert not in self._segments:
            trajectory = [self.buffer.params(expert, e) for e in range(self.end + 1)]
            self._segments[expert] = (trajectory[0], trajectory[-1], shortcut_betas(trajectory))
        first, last, betas = self._segments[expert]
        return shortcut_point(first, last, betas, epoch)


# ----------------------------------------------------------------------------- the EMA

class EmaMatcher(TrajectoryMatcher):
    """The matcher, plus after every update ``ema_<name> = d ema_<name> + (1 - d) <name>`` for
    each learned tensor of ``EMA_OF`` present (the averages are held, not learned, tensors:
    they are checkpointed and resumed with the rest)."""

    def __init__(self, *args, ema_decay: float, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.ema_decay = ema_decay

    def update(self, tensors, learned, opt, seed: int, it: int) -> float:  # noqa: ANN001
        loss = super().update(tensors, learned, opt, seed, it)
        with torch.no_grad():
            for name in EMA_OF:
                if f"ema_{name}" in tensors:
                    tensors[f"ema_{name}"].mul_(self.ema_decay).add_(tensors[name], alpha=1 - self.ema_decay)
        return loss


def with_ema(learned: dict[str, LearnedTensor]) -> dict[str, LearnedTensor]:
    """``learned`` plus a held copy ``ema_<name>`` of each tensor the EMA follows."""
    return {**learned, **{f"ema_{k}": LearnedTensor(learned[k].value.detach().clone(), learn=False)
                          for k in EMA_OF if k in learned}}


# ----------------------------------------------------------------------------- the method

@register("ptm-st", "distillation",
          "PTM-ST: LoRS-style matching in phases of later teachers, on shortcut trajectories, EMA of the set")
class PtmSt(Lors):
    Params = PtmStConfig
    version = 1
    # Phases chain runs, so a snapshot of one run is no shorter run's result: no snapshots.
    snapshot_param = None
    # Trajectory matching's learning rates and iterations (per phase) plus the EMA decay (the
    # authors use 0.99 with 2,000 iterations a phase; a run of 100-200 iterations keeps
    # 0.99^100 = 37% of its start in the average, so 0.9 and 0.95 average ~10-20 iterations) and
    # how the budget is split (the authors' 40/60, even, and more to the early phase).
    default_search: ClassVar[dict] = {**TrajectoryMatching.default_search, "ema_decay": [0.9, 0.95, 0.99],
                                      "phase_fractions": [[0.4, 0.6], [0.5, 0.5], [0.6, 0.4]]}
    default_budget_search: ClassVar[dict] = {}

    @classmethod
    def expert_epochs_needed(cls, params: PtmStConfig) -> int:
        return params.last_epoch + 1

    @classmethod
    def expert_epochs_reason(cls, params: PtmStConfig) -> str:
        return (f"phase_max_start {list(params.phase_max_start)} + expert_epochs {params.expert_epochs}"
                + (f", shortcut_ends {list(params.shortcut_ends)}" if params.shortcut else ""))

    @classmethod
    def budget_problem(cls, params: PtmStConfig, budget: int, data: PreparedDataset) -> str | None:
        sizes = phase_sizes(budget, params.phase_fractions)
        if min(sizes) < 2:
            return (f"the budget {budget} split by phase_fractions {list(params.phase_fractions)} gives phases of "
                    f"{sizes} pairs; each needs at least 2 (a contrastive batch)")
        if params.rank > min(sizes):
            return (f"rank {params.rank} is more than the smallest phase ({min(sizes)} of the budget {budget}'s "
                    f"{sizes} pairs); lower rank, for this budget through budget_params")
        return None

    def learned(self, real: PairSet, text_scale: float = 1.0, seed: int = 0) -> dict[str, LearnedTensor]:
        return with_ema(super().learned(real, text_scale, seed))

    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        cfg: PtmStConfig = self.params
        check_budget(budget, ctx.n_pairs)
        problem = self.budget_problem(cfg, budget, ctx.data)
        if problem:
            raise ValueError(problem)
        buffer = ctx.experts()
        init = np.sort(np.random.default_rng(seed).choice(ctx.n_pairs, size=budget, replace=False))
        text_scale = float(ctx.data.text_emb["train"].float().square().sum(dim=1).mean())
        sizes = phase_sizes(budget, cfg.phase_fractions)
        bounds = np.cumsum([0] + sizes)
        states: list[MatchingState] = []
        for k in range(len(sizes)):
            phase_init = init[bounds[k]:bounds[k + 1]]
            teacher = ShortcutTrajectories(buffer, cfg.shortcut_ends[k]) if cfg.shortcut else buffer
            phase = cfg.phase(k)
            key = run_key(self.name, self.version, ctx.data.key, buffer.key, len(buffer), buffer.epochs, phase,
                          budget, seed, k, phase_init.tolist())
            checkpoint = ctx.cache_dir / "distill" / f"{ctx.data.name}-{self.name}-{key}.pt"
            augment = None if cfg.augment is None else Augmentation(cfg.augment)
            matcher = EmaMatcher(ctx.student(seed), teacher, phase, ctx.device, inner_loss=self.inner_loss(),
                                 augment=augment, checkpoint=checkpoint, head_inputs=self.head_inputs(),
                                 ema_decay=cfg.ema_decay)
            learned = self.learned(ctx.real_subset(phase_init), text_scale, seed + 1000 * k)
            phase_seed = seed if k == 0 else int(np.random.default_rng([seed, k]).integers(2**31))
            states.append(matcher.run(learned, phase_seed, key, progress=ctx.progress))
        return self.combine(states, init, buffer, ctx.data.text_emb["train"])

    def combine(self, states: list[MatchingState], init: np.ndarray, buffer,  # noqa: ANN001
                real_texts: torch.Tensor) -> MethodOutput:
        """One set from the phases' averages: images and texts concatenated, the similarity
        block-diagonal, the last phase's step sizes."""
        cfg: PtmStConfig = self.params
        images = torch.cat([s.tensors["ema_images"] for s in states])
        texts = torch.cat([s.tensors["ema_texts"] for s in states])
        blocks = [similarity(s.tensors["ema_sim_diag"], s.tensors["ema_sim_left"], s.tensors["ema_sim_right"],
                             cfg.alpha, cfg.rank).detach() for s in states]
        matrix = torch.block_diag(*blocks)
        lrs = states[-1].tensors["ema_lrs"]
        learned_lrs = {"image": float(lrs[0]), "text": float(lrs[1])}
        off = matrix[~torch.eye(len(matrix), dtype=torch.bool)]
        return MethodOutput(
            pairs=replace(PairSet.synthetic(images, texts), soft_targets=SoftTargets(matrix, cfg.loss)),
            learned_lrs=learned_lrs,
            info={"matching_loss": [v for s in states for v in s.losses], "init_indices": init.tolist(),
                  "phase_sizes": [len(s.tensors["images"]) for s in states],
                  "phase_learned_lrs": [[float(x) for x in s.tensors["ema_lrs"]] for s in states],
                  "iterations": sum(s.iteration for s in states), "learned_lrs": learned_lrs,
                  "expert_buffer_bytes": buffer.size_bytes(),
                  "matching_seconds": round(sum(s.seconds for s in states), 3),
                  "resumes": sum(s.resumes for s in states),
                  "matching_seconds_earlier": round(sum(s.earlier_seconds for s in states), 3),
                  "text_drift": text_drift(texts, real_texts, init),
                  "soft_targets": {"loss": cfg.loss, "diag_mean": float(matrix.diagonal().mean()),
                                   "offdiag_mean": float(off.mean()),
                                   "offdiag_abs_max": float(off.abs().max()) if off.numel() else 0.0}},
        )


__all__ = ["EmaMatcher", "PtmSt", "PtmStConfig", "ShortcutTrajectories", "phase_sizes", "shortcut_betas",
           "shortcut_point", "with_ema"]
