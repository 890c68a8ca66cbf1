"""The contract between the suite and a method plugin.

A method gets the training pairs (through a :class:`MethodContext`), a budget and a seed, and
returns a :class:`MethodOutput`: the pair set a student will be trained on, plus what the
evaluation needs to know (learned learning rates, soft targets) and, for coresets, which real
pairs were chosen. Everything shared (proxy features, training, recall) is reached through the
context, so a method module holds only its own rule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch

from bench.data.datasets import PreparedDataset
from bench.data.pairs import PairSet, SoftTargets, normalize_images
from bench.models.student import ModelConfig, Student, build_student

if TYPE_CHECKING:  # real types for plugin authors, without importing training code here
    from bench.distill.experts import TrajectoryBuffer
    from bench.protocol.proxy import ProxyConfig, ProxyRun

MethodKind = Literal["coreset", "distillation", "reference"]


@dataclass(frozen=True)
class NoParams:
    """Parameters of a method that takes none (any key in its config is then an error)."""


@dataclass(frozen=True)
class MethodOutput:
    """pairs: what to train on (with its soft targets, if the method learned any:
    ``PairSet.synthetic(images, texts, SoftTargets(matrix, loss))``). learned_lrs:
    {'image': .., 'text': ..} to use instead of the evaluation recipe's learning rates.
    info: small JSON-serialisable facts worth recording (e.g. a final matching loss)."""

    pairs: PairSet
    learned_lrs: dict[str, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def source_indices(self) -> torch.Tensor | None:
        return self.pairs.source_indices

    @property
    def soft_targets(self) -> SoftTargets | None:
        return self.pairs.soft_targets


class MethodContext:
    """What a method may use. Proxy results are computed lazily and cached per dataset, so a
    method that never asks for them costs nothing."""

    def __init__(
        self,
        data: PreparedDataset,
        model_cfg: ModelConfig,
        device: torch.device,
        cache_dir: Path,
        proxy_loader: Callable[[], ProxyRun] | None = None,
        progress: bool = False,
        experts_loader: Callable[[], TrajectoryBuffer] | None = None,
    ) -> None:
        self.data = data
        self.model_cfg = model_cfg
        self.device = device
        self.cache_dir = Path(cache_dir)
        self.progress = progress
        self._proxy_loader = proxy_loader
        self._proxy: ProxyRun | None = None
        self._experts_loader = experts_loader

    @property
    def n_pairs(self) -> int:
        return self.data.train.n_captions

    def proxy(self) -> ProxyRun:
        """The proxy run (:class:`bench.protocol.proxy.ProxyRun`): pair features and forgetting stats."""
        if self._proxy is None:
            if self._proxy_loader is None:
                raise RuntimeError("this context has no proxy model configured")
            self._proxy = self._proxy_loader()
        return self._proxy

    def experts(self) -> TrajectoryBuffer:
        """The dataset's expert trajectories (:class:`bench.distill.experts.TrajectoryBuffer`)."""
        if self._experts_loader is None:
            raise RuntimeError("this context has no expert trajectories configured")
        return self._experts_loader()

    def proxy_features(self) -> np.ndarray:
        """(n_pairs, d_img + d_txt): L2-normalised image embedding ++ text embedding of each pair."""
        return self.proxy().features

    def real_subset(self, indices: np.ndarray | torch.Tensor) -> PairSet:
        """The training pairs at ``indices``: distinct integers in ``[0, n_pairs)`` (a float
        index such as 0.7 would silently become pair 0, a repeated one a smaller set scored
        as a bigger one)."""
        array = indices.numpy(force=True) if isinstance(indices, torch.Tensor) else np.asarray(indices)
        problem = index_problem(array, self.n_pairs)
        if problem:
            raise ValueError(f"real_subset: the indices {problem}")
        return self.data.train_pairs(torch.as_tensor(array, dtype=torch.int64))

    def editable_subset(self, indices: np.ndarray | torch.Tensor, device: torch.device | None = None) -> EditableSet:
        """The training pairs at ``indices`` as a synthetic set to learn (:func:`editable_set`),
        on ``device`` (default: the cell's device). The usual start of a distillation method."""
        return editable_set(self.real_subset(indices), self.device if device is None else device)

    def student(self, seed: int) -> Student:
        """A fresh student of the grid's model for this dataset (initialised from ``seed``; a
        pretrained tower carries its weights): what experts and the evaluation train, so a
        method can load expert parameters into it, train it or use it as a teacher."""
        return build_student(self.model_cfg, self.data.train.resolution, self.data.text_dim, seed)


@dataclass(frozen=True)
class EditableSet:
    """A synthetic set a method edits, started from real pairs. ``images`` (n, 3, H, W) in the
    normalised model-input space and ``texts`` (n, d), both float32 leaf tensors with
    ``requires_grad`` (an optimiser takes them as they are); ``source_indices``: the training
    pairs they were copied from (None when unknown). They are copies: editing them in place
    never changes the training split the next cell reads."""

    images: torch.Tensor
    texts: torch.Tensor
    source_indices: torch.Tensor | None = None

    def pairs(self, soft_targets: SoftTargets | None = None) -> PairSet:
        """The set as a method returns it (detached, on the CPU): ``MethodOutput(pairs=...)``."""
        return PairSet.synthetic(self.images.detach().cpu(), self.texts.detach().cpu(), soft_targets)


def editable_set(real: PairSet, device: torch.device | str | None = None) -> EditableSet:
    """Real pairs as an editable synthetic set: each pair's image (uint8 pixels normalised to
    the model input; a float image is taken as model input already) and text vector, copied to
    ``device`` (None: where they are) as float32 leaves that require grad. The one way the
    built-in distillation methods initialise from real pairs."""
    images = normalize_images(real.images[real.image_index])
    return EditableSet(
        images=images.detach().to(device, torch.float32, copy=True).requires_grad_(True),
        texts=real.text_emb.detach().to(device, torch.float32, copy=True).requires_grad_(True),
        source_indices=None if real.source_indices is None else real.source_indices.clone(),
    )


class Method(ABC):
    """Base class of every method. Subclasses set ``Params`` to a frozen dataclass of their
    parameters (validated from the grid config; unknown keys are errors) and implement ``run``.
    ``name``, ``kind`` and ``description`` are filled in by :func:`bench.registry.register`."""

    name: ClassVar[str]
    kind: ClassVar[MethodKind]
    description: ClassVar[str]
    Params: ClassVar[type] = NoParams
    #: True when run() reads ctx.proxy(): the runner then trains (or loads) the proxy first,
    #: outside the method's timing, and shares it between cells.
    uses_proxy: ClassVar[bool] = False
    #: True when run() reads ctx.experts(): the runner trains missing experts first (one Ray
    #: task per expert), outside the method's timing.
    uses_experts: ClassVar[bool] = False
    #: Part of every cell's hash when not 1: bump it when a change of the code changes what the
    #: method produces for the same parameters, so that earlier records become stale.
    version: ClassVar[int] = 1
    #: The space ``search: default`` explores on the data at hand (plain data: parameter -> a
    #: list of values, or a range ``{low, high, log, int}``; see ``bench/grid/search.py``), and
    #: per budget the entries that replace or add to it (larger sets may want other ranges).
    #: Empty: the method has nothing to tune (its one trial is its defaults).
    default_search: ClassVar[dict[str, Any]] = {}
    default_budget_search: ClassVar[dict[int, dict[str, Any]]] = {}
    #: A parameter whose smaller values are prefixes of one longer run (the iterations of an
    #: optimisation): tuning runs the largest value once and reads the others from snapshots.
    snapshot_param: ClassVar[str | None] = None

    def __init__(self, params: Any) -> None:
        self.params = params

    @classmethod
    def set_params(cls, params: Any) -> Any:
        """``params`` less what cannot change the set the method makes (how often a run
        checkpoints, which snapshots it keeps). A cell's set hash reads these, so a tuning run
        that keeps snapshots and the test cell of its values share their set
        (bench/grid/set_index.py). Default: every parameter counts."""
        return params

    @classmethod
    def expert_epochs_needed(cls, params: Any) -> int:
        """How many recorded expert epochs ``run`` reads with ``params`` (a method with
        ``uses_experts`` overrides this): the grid refuses, when it loads, an ``experts.epochs``
        below it, instead of every cell failing after the experts were trained."""
        return 0

    @classmethod
    def proxy_problem(cls, params: Any, proxy: ProxyConfig) -> str | None:
        """Why ``run`` with ``params`` cannot read what the grid's proxy records (e.g. a
        gallery epoch missing from ``proxy.gallery_epochs``), or None. A method with
        ``uses_proxy`` overrides this: the grid refuses such parameters when it loads, instead
        of every cell failing after its proxy trained."""
        return None

    @classmethod
    def budget_problem(cls, params: Any, budget: int, data: PreparedDataset) -> str | None:
        """Why ``run`` with ``params`` cannot return ``budget`` pairs from ``data`` (beyond
        ``budget`` <= the training pairs, checked for every method), or None: checked in the
        driver once every dataset is prepared, before any cell runs (e.g. a per-image cap that
        leaves fewer pairs than the budget)."""
        return None

    @classmethod
    def file_problem(cls, params: Any) -> str | None:
        """Why a file that ``params`` name cannot be read as ``run`` needs it (missing, not in
        the format given), or None: checked for every method when the grid loads, so that such
        an entry is one line before any dataset is prepared. The message starts with the
        parameter's name (``path: ...``)."""
        return None

    @classmethod
    def input_digest(cls, params: Any) -> str | None:
        """The content identity (e.g. a sha256) of the files ``params`` name, or None when they
        name none: part of every cell's hash, so that a file replaced at the same path makes
        the cells that read it stale instead of showing the old file's numbers."""
        return None

    @classmethod
    def expert_epochs_reason(cls, params: Any) -> str:
        """The parameters behind :meth:`expert_epochs_needed`, with their values, as the
        load-time error names them (e.g. ``max_start_epoch 2 + expert_epochs 1``): each method
        names its own, so the error never asks for a parameter the method does not have."""
        return "the method's parameters"

    @abstractmethod
    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        """Produce a set of ``budget`` pairs. Every random choice derives from ``seed``."""


def index_problem(indices: np.ndarray, n_pairs: int) -> str | None:
    """Why ``indices`` cannot name a set of training pairs (not a 1-D integer array, outside
    ``[0, n_pairs)``, or a pair named twice), or None."""
    if indices.ndim != 1:
        return f"must be a 1-D array, got shape {indices.shape}"
    if indices.size and indices.dtype.kind not in "iu":
        return f"must be integers, got {indices.dtype} (e.g. {indices.flat[0].item()!r})"
    if not indices.size:
        return None
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= n_pairs:
        return f"must lie in [0, {n_pairs}), got {low if low < 0 else high}"
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        first = int(np.argmax(counts > 1))
        return (f"name pair {int(values[first])} {int(counts[first])} times ({int((counts > 1).sum())} pair(s) "
                "repeated); a set holds each pair once")
    return None


def check_budget(budget: int, n_pairs: int) -> None:
    if budget < 1:
        raise ValueError(f"budget must be positive, got {budget}")
    if budget > n_pairs:
        raise ValueError(f"budget {budget} is larger than the training set ({n_pairs} pairs)")
