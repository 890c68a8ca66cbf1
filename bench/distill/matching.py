"""Trajectory matching (MTT, as adapted to image-text pairs by Wu et al., TMLR 2024).

One matcher serves every method that learns a synthetic set by matching expert trajectories.
Each iteration starts a student at an expert's parameters theta_s, takes ``syn_steps``
differentiable SGD steps on mini-batches of the synthetic set with learnable step sizes (one
for the image side, one for the text side), and minimises

    ||theta_hat_img - theta_{s+E}_img||^2 / ||theta_s_img - theta_{s+E}_img||^2
  + ||theta_hat_txt - theta_{s+E}_txt||^2 / ||theta_s_txt - theta_{s+E}_txt||^2

with respect to the learned tensors (s is one start epoch for both sides, or, with a text start
range of its own, one per side: AMD's asynchronous matching). What is learned is data: the method hands the matcher a
mapping of :class:`LearnedTensor` (``images``, ``texts`` and ``lrs`` always, plus anything its
inner loss reads, e.g. LoRS's similarity parameters), each with its own optimiser settings and
an optional projection, and optionally its own inner loss. How the meta-gradient is computed
(``memory: unrolled`` or ``recompute``, see :mod:`bench.distill.unroll`) does not change it.

Every random choice of iteration ``it`` comes from a generator seeded with (seed, it), so a
run resumed from a checkpoint repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from bench.core.io import load_torch_or_none, stable_hash, torch_save_atomic
from bench.distill.flat_params import ParamLayout
from bench.distill.unroll import (
    META_GRADIENTS,
    Augment,
    HeadInputs,
    InnerLoss,
    InnerSteps,
    MemoryMode,
    Precision,
    StepPlan,
    contrastive_inner_loss,
    math_attention,
)
from bench.models.student import Student
from bench.protocol.augment import AugmentConfig
from bench.protocol.train import check_contrastive_batch, check_momentum

__all__ = ["LearnedTensor", "MatchingConfig", "MatchingState", "TrajectoryMatcher", "math_attention", "run_key"]


@dataclass(frozen=True)
class MatchingConfig:
    """Parameters of trajectory matching (names follow the MTT / VL-distillation code).

    Start epochs are drawn from [min_start_epoch, max_start_epoch); the target is
    ``expert_epochs`` later. text_min_start_epoch / text_max_start_epoch: the text side's own
    start range (asynchronous matching, AMD, ICLR 2026): when either is set, the text head starts
    from its own start epoch, drawn independently from [text_min_start_epoch,
    text_max_start_epoch) (an unset bound is the image side's), and is matched to that epoch +
    ``expert_epochs``; unset (the default), both sides start from one epoch, as in MTT-VL and
    LoRS. inner_logit_scale: the contrastive logit scale inside the unrolled
    steps (1/0.07 as in the evaluation; the original code used log(1/0.07) = 2.66 there by
    mistake, set it to reproduce that). checkpoint_every: iterations between checkpoints
    (0 = never).

    memory: how the meta-gradient is computed, with the same result: ``recompute`` keeps only
    the parameter iterates and re-runs one step at a time backwards (peak memory independent of
    syn_steps, at the price of one more plain forward and backward per step: 1.2x the time of
    ``unrolled`` for the quickstart ConvNet on CPU, so ``unrolled``, which keeps the graph of
    every step, is the default; the paper configs use ``recompute``). iterate_segment
    (``recompute`` only): keep every s-th parameter iterate (and the last segment's) and replay
    the others when needed, so that the iterates too stop growing with syn_steps (about
    syn_steps/s + s vectors instead of syn_steps + 1; one more plain step per replayed step;
    None keeps them all). precision: ``bf16`` runs the
    student's forward in the inner steps under bfloat16 autocast (the loss, the parameters and
    the step stay float32). expert_snapshots: where the expert parameters the matcher reads are
    kept after their first read from disk: on the compute ``device``, in ``host`` memory (copied
    to the device per use) or ``auto`` (the device when they take at most a quarter of it).
    augment: a differentiable augmentation of each inner step's images (:mod:`bench.protocol.augment`),
    drawn from the step's seed; usually the one the experts trained with.

    merge_sides: one normalised distance over all parameters instead of one per side and their
    sum (LoRS's ``--merge_loss_branches``, used for COCO).

    max_update: a trust region for every learned tensor (images, texts, step sizes): one
    iteration's gradient step moves it by at most this fraction of its norm (the gradient is
    scaled down when it would move it further). The matching loss is steep where the unrolled
    student overshoots, and a single spike of its gradient can throw the step sizes and the
    text vectors far off, after which the set never recovers; None = no limit, as in MTT.

    Text vectors live in the frozen encoder's space, whose scale depends on the encoder
    (unit norm for MiniLM, norm ~15 for BERT's [CLS]). text_lr_relative: ``lr_txt`` is in units
    of that scale: it is multiplied by the mean squared norm of the real caption vectors (the
    text head ends in a LayerNorm, so its gradient with respect to a vector of norm s scales as
    1/s and a step moves the vector by lr/s^2 of its length). text_sphere: after every update each
    text vector is rescaled to the norm of the caption it started from (the unit sphere for a
    normalised encoder), so it stays a vector the encoder could have produced."""

    iterations: int = 200
    syn_steps: int = 8
    expert_epochs: int = 1
    max_start_epoch: int = 2
    batch_syn: int | None = None
    lr_img: float = 100.0
    lr_txt: float = 100.0
    lr_lr: float = 1e-5
    syn_lr_init: float = 0.01
    momentum: float = 0.5
    inner_logit_scale: float = 1 / 0.07
    checkpoint_every: int = 25
    min_start_epoch: int = field(default=0, metadata={"omit_if_default": True})
    memory: MemoryMode = field(default="unrolled", metadata={"omit_if_default": True})
    iterate_segment: int | None = field(default=None, metadata={"omit_if_default": True})
    precision: Precision = field(default="fp32", metadata={"omit_if_default": True})
    expert_snapshots: Literal["auto", "device", "host"] = field(default="auto", metadata={"omit_if_default": True})
    augment: AugmentConfig | None = field(default=None, metadata={"omit_if_default": True})
    max_update: float | None = field(default=None, metadata={"omit_if_default": True})
    merge_sides: bool = field(default=False, metadata={"omit_if_default": True})
    text_lr_relative: bool = field(default=False, metadata={"omit_if_default": True})
    text_sphere: bool = field(default=False, metadata={"omit_if_default": True})
    #: Also keep the state at these iteration counts, each where a run of that many iterations
    #: keeps its final checkpoint: a later run with ``iterations`` = one of them finds itself
    #: finished (tuning evaluates "when to stop" from one run). Changes nothing of this run.
    snapshots: tuple[int, ...] = field(default=(), metadata={"omit_if_default": True})
    # Kept out of the repr, which run keys hash (see run_key): keys made before these existed stay valid.
    text_min_start_epoch: int | None = field(default=None, repr=False, metadata={"omit_if_default": True})
    text_max_start_epoch: int | None = field(default=None, repr=False, metadata={"omit_if_default": True})

    def __post_init__(self) -> None:
        if min(self.iterations, self.syn_steps, self.expert_epochs, self.max_start_epoch) < 1:
            raise ValueError("iterations, syn_steps, expert_epochs and max_start_epoch must be >= 1")
        if not 0 <= self.min_start_epoch < self.max_start_epoch:
            raise ValueError(f"min_start_epoch must be in [0, max_start_epoch = {self.max_start_epoch}), "
                             f"got {self.min_start_epoch}")
        if self.iterate_segment is not None and (self.iterate_segment < 1 or self.memory != "recompute"):
            raise ValueError(f"iterate_segment must be >= 1 and needs memory: recompute (got {self.iterate_segment} "
                             f"with memory: {self.memory})")
        if self.batch_syn is not None:
            check_contrastive_batch(self.batch_syn, "batch_syn")
        if any(not 1 <= s < self.iterations for s in self.snapshots):
            raise ValueError(f"snapshots must be iteration counts in [1, iterations = {self.iterations}), "
                             f"got {list(self.snapshots)}")
        if self.syn_lr_init <= 0 or self.checkpoint_every < 0:
            raise ValueError("syn_lr_init must be > 0 and checkpoint_every >= 0")
        for name in ("lr_img", "lr_txt", "lr_lr"):  # a negative rate would ascend the matching loss
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 holds that tensor fixed), got {getattr(self, name)}")
        check_momentum(self.momentum)
        if self.max_update is not None and self.max_update <= 0:
            raise ValueError(f"max_update must be > 0 (or null for no trust region), got {self.max_update}")
        self._check_text_range()

    def _check_text_range(self) -> None:
        if self.text_max_start_epoch is not None and self.text_max_start_epoch < 1:
            raise ValueError(f"text_max_start_epoch must be >= 1 (or null: max_start_epoch's), "
                             f"got {self.text_max_start_epoch}")
        text = self.text_start_range
        if text is None or 0 <= text[0] < text[1]:
            return
        if self.text_min_start_epoch is None:
            raise ValueError(f"text_max_start_epoch must be > min_start_epoch = {self.min_start_epoch} (the text "
                             f"side's lowest start while text_min_start_epoch is unset), got {text[1]}")
        bound = "text_max_start_epoch" if self.text_max_start_epoch is not None else "max_start_epoch"
        raise ValueError(f"text_min_start_epoch must be in [0, {bound} = {text[1]}), got {text[0]}"
                         + ("" if self.text_max_start_epoch is not None else
                            " (text_max_start_epoch is unset: the text side's range ends where the image side's does)"))

    @property
    def text_start_range(self) -> tuple[int, int] | None:
        """The text side's own start range [low, high), or None: the text side starts where the
        image side does (synchronous matching)."""
        if self.text_min_start_epoch is None and self.text_max_start_epoch is None:
            return None
        low = self.min_start_epoch if self.text_min_start_epoch is None else self.text_min_start_epoch
        high = self.max_start_epoch if self.text_max_start_epoch is None else self.text_max_start_epoch
        return low, high

    def start_ranges(self) -> list[tuple[int, int]]:
        """Every start range [low, high) an iteration draws from: the image side's, and the
        text side's own when it has one."""
        text = self.text_start_range
        return [(self.min_start_epoch, self.max_start_epoch)] + ([] if text is None else [text])

    @property
    def epochs_read(self) -> set[int]:
        """The expert epochs an iteration can read: every start epoch and its target."""
        return {e for low, high in self.start_ranges() for s in range(low, high) for e in (s, s + self.expert_epochs)}

    @property
    def last_epoch(self) -> int:
        """The latest expert epoch an iteration can read."""
        return max(high for _, high in self.start_ranges()) - 1 + self.expert_epochs

    @property
    def last_epoch_reason(self) -> str:
        """The parameters behind :attr:`last_epoch`, with their values (for error messages)."""
        text = self.text_start_range
        if text is not None and text[1] > self.max_start_epoch:
            return f"text_max_start_epoch {text[1]} + expert_epochs {self.expert_epochs}"
        return f"max_start_epoch {self.max_start_epoch} + expert_epochs {self.expert_epochs}"


@dataclass
class LearnedTensor:
    """A tensor the matcher holds: learned by SGD with its own ``lr`` and ``momentum`` (or held
    fixed when ``learn`` is False), then passed through ``project`` (in place, no grad) after
    every update, e.g. to keep step sizes non-negative or text vectors on the unit sphere.
    ``max_update``: a trust region; the gradient is scaled down so that ``lr * ||grad||`` is at
    most this fraction of ``||value||`` (None: no limit)."""

    value: torch.Tensor
    lr: float = 0.0
    momentum: float = 0.0
    learn: bool = True
    project: Callable[[torch.Tensor], None] | None = None
    max_update: float | None = None


def clip_to_trust_region(grad: torch.Tensor, value: torch.Tensor, lr: float, max_update: float) -> torch.Tensor:
    """``grad`` scaled so that an SGD step of ``lr`` moves ``value`` by at most ``max_update``
    of its norm (unchanged when it already does)."""
    step = lr * grad.norm()
    limit = max_update * value.detach().norm()
    return grad * (limit / step) if step > limit else grad


def non_negative(t: torch.Tensor) -> None:
    """A negative step size is gradient ascent (and an invalid evaluation learning rate)."""
    t.clamp_(min=0.0)


def step_sizes(init: float, lr: float, momentum: float, max_update: float | None = None) -> LearnedTensor:
    """The learnable (image-side, text-side) step sizes of the unrolled SGD."""
    return LearnedTensor(torch.full((2,), float(init)), lr, momentum, True, non_negative, max_update)


@dataclass
class MatchingState:
    """Everything a checkpoint holds: the tensors, optimiser, progress and time spent."""

    tensors: dict[str, torch.Tensor]
    iteration: int
    losses: list[float]
    optimizer: dict[str, Any]
    seconds: float = 0.0  # matching wall time, summed over every run that contributed
    resumes: int = 0  # how many times the run continued from a checkpoint
    #: ``seconds`` as the checkpoint this run continued held (0 for a fresh run): the matching
    #: already paid for, so a cell that reuses a finished checkpoint can say what its set cost.
    earlier_seconds: float = 0.0


class Trajectories(Protocol):
    """What the matcher reads from an expert buffer (:class:`bench.distill.experts.TrajectoryBuffer`)."""

    epochs: int

    def __len__(self) -> int: ...

    def params(self, expert: int, epoch: int) -> dict[str, torch.Tensor]: ...


class ExpertSnapshots:
    """Flat expert parameters, read from disk once and kept (on the device when they fit),
    instead of read and copied on every iteration."""

    def __init__(self, buffer: Trajectories, layout: ParamLayout, cfg: MatchingConfig,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.buffer, self.layout, self.device, self.dtype = buffer, layout, device, dtype
        nbytes = len(buffer) * len(cfg.epochs_read) * layout.numel * torch.finfo(dtype).bits // 8
        place = cfg.expert_snapshots
        if place == "auto":
            fits = device.type != "cuda" or nbytes <= torch.cuda.get_device_properties(device).total_memory // 4
            place = "device" if fits else "host"
        self.home = device if place == "device" else torch.device("cpu")
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def get(self, expert: int, epoch: int) -> torch.Tensor:
        key = (expert, epoch)
        if key not in self._cache:
            flat = self.layout.flatten(self.buffer.params(expert, epoch), dtype=self.dtype)
            self._cache[key] = flat.pin_memory() if self.home != self.device and self.device.type == "cuda" \
                else flat.to(self.home)
        return self._cache[key].to(self.device, non_blocking=True)


class TrajectoryMatcher:
    """Learns a synthetic set by matching the trajectories in ``buffer``.

    ``inner_loss`` (default: symmetric InfoNCE at ``cfg.inner_logit_scale``) is what the
    student minimises in the unrolled steps; ``augment`` (optional) is applied to each batch of
    images there; ``head_inputs`` (optional, :class:`bench.distill.unroll.HeadInputs`) maps each
    step's tower features and text vectors to what the heads get."""

    def __init__(self, student: Student, buffer: Trajectories, cfg: MatchingConfig, device: torch.device,
                 inner_loss: InnerLoss | None = None, augment: Augment | None = None,
                 checkpoint: Path | None = None, head_inputs: HeadInputs | None = None,
                 keep_at: Mapping[int, tuple[str, Path]] | None = None) -> None:
        if cfg.last_epoch + 1 > buffer.epochs:
            raise ValueError(
                f"{cfg.last_epoch_reason} exceeds the {buffer.epochs} recorded expert epochs (raise experts.epochs)"
            )
        self.student = student.to(device).train()
        self.buffer = buffer
        self.cfg = cfg
        self.device = device
        self.checkpoint = checkpoint
        #: iteration -> (key, path) of the checkpoint a run of that many iterations would finish with
        self.keep_at = dict(keep_at or {})
        self.layout = ParamLayout.of(student)
        self.dtype = next(iter(student.trainable_parameters().values())).dtype
        self.steps = InnerSteps(self.student, self.layout, inner_loss or contrastive_inner_loss(cfg.inner_logit_scale),
                                augment, cfg.precision, cfg.merge_sides, cfg.iterate_segment, head_inputs)
        self.snapshots = ExpertSnapshots(buffer, self.layout, cfg, device, self.dtype)

    # ----------------------------------------------------------------- one iteration
    def plan(self, n: int, seed: int, it: int) -> tuple[int, int, StepPlan]:
        """Iteration ``it``'s expert, start epoch and step plan (a function of seed and it only)."""
        rng = np.random.default_rng([seed, it])
        expert = int(rng.integers(len(self.buffer)))
        start_epoch = int(rng.integers(self.cfg.min_start_epoch, self.cfg.max_start_epoch))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch = min(self.cfg.batch_syn or n, n)  # a batch larger than the set would repeat pairs
        rounds = -(-self.cfg.syn_steps * batch // n)
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(rounds)]).to(self.device)
        batches = tuple(order[k * batch:(k + 1) * batch] for k in range(self.cfg.syn_steps))
        seeds = tuple(int(s) for s in rng.integers(2**62, size=self.cfg.syn_steps))
        return expert, start_epoch, StepPlan(batches, seeds)

    def text_start_epoch(self, seed: int, it: int, image_epoch: int) -> int:
        """Iteration ``it``'s start epoch of the text side: the image side's ``image_epoch``
        unless the config gives the text side its own range; then it is drawn from that range by
        a generator of its own, seeded with (seed, it, 1), so that every draw of :meth:`plan`
        (expert, image start epoch, batches, step seeds) is the synchronous run's."""
        text = self.cfg.text_start_range
        if text is None:
            return image_epoch
        return int(np.random.default_rng([seed, it, 1]).integers(*text))

    def endpoints(self, expert: int, image_epoch: int, text_epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The flat start and target of a student: each side's parameters from ``expert`` at
        that side's start epoch and ``expert_epochs`` later. The matching distance normalises
        each side by its own expert displacement, so nothing else changes with two epochs."""
        e = self.cfg.expert_epochs
        start, target = self.snapshots.get(expert, image_epoch), self.snapshots.get(expert, image_epoch + e)
        if text_epoch == image_epoch:
            return start, target
        image, text = self.layout.side("image"), self.layout.side("text")
        text_start, text_target = self.snapshots.get(expert, text_epoch), self.snapshots.get(expert, text_epoch + e)
        return torch.cat([start[image], text_start[text]]), torch.cat([target[image], text_target[text]])

    def meta_gradients(self, tensors: Mapping[str, torch.Tensor], seed: int, it: int
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The matching loss of iteration ``it`` and its gradient with respect to every tensor of
        ``tensors`` that requires grad (``images``, ``texts``, ``lrs`` and any a method adds)."""
        expert, start_epoch, plan = self.plan(tensors["images"].shape[0], seed, it)
        start, target = self.endpoints(expert, start_epoch, self.text_start_epoch(seed, it, start_epoch))
        fork = [self.device.index or 0] if self.device.type == "cuda" else []
        images = tensors["images"]
        if self.steps.from_features:  # the frozen tower once per iteration, not once per step
            with self.steps.autocast(self.device):
                features = self.student.image_features(images)
            tensors = {**tensors, "images": features.detach().to(self.dtype).requires_grad_(images.requires_grad)}
        with torch.random.fork_rng(devices=fork), math_attention():
            try:
                loss, grads = META_GRADIENTS[self.cfg.memory](self.steps, start, target, tensors, plan)
            except RuntimeError as exc:
                if "derivative for" in str(exc) and "not implemented" in str(exc):
                    raise RuntimeError(
                        f"trajectory matching differentiates through training steps (double backward), which an "
                        f"op of the student does not support ({exc}); for a transformers tower set "
                        f"image_encoder.attn_implementation: eager") from exc
                raise
        if self.steps.from_features and "images" in grads:  # through the tower to the pixels
            (grads["images"],) = torch.autograd.grad(features, images, grads["images"].to(features.dtype))
        return loss, grads

    def tensors(self, learned: Mapping[str, LearnedTensor],
                values: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The working tensors on the device (``values`` or the learned tensors' own), each
        requiring grad exactly when it is learned."""
        values = values or {k: spec.value for k, spec in learned.items()}
        return {k: values[k].detach().to(self.device, self.dtype).clone().requires_grad_(spec.learn)
                for k, spec in learned.items()}

    @staticmethod
    def optimizer(tensors: Mapping[str, torch.Tensor], learned: Mapping[str, LearnedTensor]) -> torch.optim.Optimizer:
        """SGD with one parameter group (lr, momentum) per learned tensor."""
        return torch.optim.SGD([{"params": [tensors[k]], "lr": spec.lr, "momentum": spec.momentum}
                                for k, spec in learned.items() if spec.learn])

    def update(self, tensors: Mapping[str, torch.Tensor], learned: Mapping[str, LearnedTensor],
               opt: torch.optim.Optimizer, seed: int, it: int) -> float:
        """One iteration: meta-gradients, the optimiser step, the projections; the loss."""
        loss, grads = self.meta_gradients(tensors, seed, it)
        for name, grad in grads.items():
            spec = learned[name]
            if spec.max_update is not None:
                grad = clip_to_trust_region(grad, tensors[name], spec.lr, spec.max_update)
            tensors[name].grad = grad
        opt.step()
        with torch.no_grad():
            for name, spec in learned.items():
                if spec.project is not None:
                    spec.project(tensors[name])
        return float(loss)

    # ----------------------------------------------------------------- checkpoints
    def load_checkpoint(self, key: str) -> MatchingState | None:
        """The checkpoint's state when it was made under ``key``; an unreadable file or one
        of another version is reported, deleted and the run starts over."""
        if self.checkpoint is None:
            return None
        blob = load_torch_or_none(self.checkpoint, "distillation checkpoint", check=_checkpoint_problem)
        return None if blob is None or blob["key"] != key else MatchingState(**blob["state"])

    def save_checkpoint(self, key: str, state: MatchingState) -> None:
        if self.checkpoint is not None:
            torch_save_atomic(self.checkpoint, {"key": key, "state": asdict(state)})

    # ----------------------------------------------------------------- the loop
    def run(self, learned: Mapping[str, LearnedTensor], seed: int, key: str, progress: bool = False,
            stop_after: int | None = None) -> MatchingState:
        """Optimise ``learned`` (resuming from the checkpoint when it matches ``key``).
        ``stop_after`` ends the run early after that many iterations in total (used to test
        resumption)."""
        from bench.core.progress import make_progress

        missing = {"images", "texts", "lrs"} - set(learned)
        if missing:
            raise ValueError(f"the matcher needs learned tensors {sorted(missing)}")
        state = self.load_checkpoint(key)
        if state is None:
            state = MatchingState({k: v.value.detach().clone() for k, v in learned.items()}, 0, [], {})
        else:
            state.resumes += 1
            state.earlier_seconds = state.seconds
        tensors = self.tensors(learned, state.tensors)
        opt = self.optimizer(tensors, learned)
        if state.optimizer:
            opt.load_state_dict(state.optimizer)
        end = self.cfg.iterations if stop_after is None else min(stop_after, self.cfg.iterations)
        started = time.perf_counter()
        with make_progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("distilling", total=self.cfg.iterations, completed=state.iteration, status="")
            for it in range(state.iteration, end):
                state.losses.append(self.update(tensors, learned, opt, seed, it))
                state.iteration = it + 1
                lrs = tensors["lrs"]
                bar.update(task, advance=1, status=f"loss {state.losses[-1]:.4f} lr {lrs[0].item():.3g}/{lrs[1].item():.3g}")
                snapshot = self.keep_at.get(state.iteration)
                if snapshot is not None or (self.cfg.checkpoint_every and state.iteration % self.cfg.checkpoint_every == 0):
                    self._store(state, tensors, opt, key, started)
                    started = time.perf_counter()
                if snapshot is not None:
                    torch_save_atomic(snapshot[1], {"key": snapshot[0], "state": asdict(state)})
        self._store(state, tensors, opt, key, started)
        return state

    def _store(self, state: MatchingState, tensors: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
               key: str, started: float) -> None:
        state.tensors = {k: t.detach().cpu().clone() for k, t in tensors.items()}
        state.optimizer = opt.state_dict()
        state.seconds += time.perf_counter() - started
        self.save_checkpoint(key, state)


def _checkpoint_problem(blob: Any) -> str | None:
    if not isinstance(blob, dict) or "key" not in blob or not isinstance(blob.get("state"), dict):
        return "not a distillation checkpoint"
    try:
        MatchingState(**blob["state"])
    except TypeError as exc:
        return f"written by another version ({exc})"
    return None


def run_key(*parts: Any) -> str:
    """The hash of a run's identity: each part's ``str``; for a dataclass, also each field kept
    out of its repr whose value is not the default (such fields were added after keys were in
    use: a run that leaves them unset keeps the key it had before they existed)."""
    return stable_hash([_key_text(p) for p in parts])


def _key_text(part: Any) -> str:
    text = str(part)
    if is_dataclass(part) and not isinstance(part, type):
        extra = [f"{f.name}={getattr(part, f.name)!r}" for f in fields(part)
                 if not f.repr and getattr(part, f.name) != f.default]
        if extra:
            text += " + " + ", ".join(extra)
    return text
