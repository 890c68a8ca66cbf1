"""What a results directory holds, declared once: cell records, failure records, the grid manifest.

Every writer (the cell runner, the executors) and every reader (the console summary, the
tables and plots, the ``table`` command, benchmarks) goes through these classes, so a field has
one name, one type and one meaning. Records are JSON (``records/<cell>.json``); a record
carries ``schema_version`` so a reader can tell which fields to expect.

Schema versions:
  1  records written before this module existed (no ``schema_version`` key; same field names)
  2  ``schema_version``; failure records carry ``cell_hash``; ``grid.json`` names the current grid;
     later, with defaults (so still version 2): ``per_seed[i]["curve"]`` (evaluation curves),
     ``eval_protocol`` and ``evaluations`` (the set on other students and under other protocols),
     ``split_sizes`` (images and captions per split)

Adding a field (e.g. facts about soft targets): give :class:`CellRecord` a new field *with a
default* (``None`` or an empty container) in the section it belongs to, fill it where the
record is built (:func:`bench.grid.cell.build_record`) and read it by attribute. Older records
then read with the default and newer readers need nothing else; bump :data:`RECORD_VERSION`
(and note it above) only when the meaning of an existing field changes. Facts that only one
method has belong in ``method_info`` (free-form JSON the method returns in
``MethodOutput.info``), not in new fields. Keys this code does not know (a record written by a
newer version) are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from bench.core.errors import UserError

#: The retrieval metrics of a record, in the order every table and summary shows them.
METRICS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "mean")
RECORD_VERSION = 2
#: Built-in coresets: the kind of a version-1 record without ``kind`` is inferred from them.
KNOWN_CORESETS = ("random", "herding", "kcenter", "forgetting")
_LOCAL = {"stored": False}  # field metadata: not written to the JSON file


def timestamp() -> str:
    """When a record or manifest was written: local time with its UTC offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RecordError(UserError, ValueError):
    """A record file that cannot be read or lacks what a reader needs (the message names it)."""


def _stored_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("stored", True)]


S = TypeVar("S", bound="_Stored")


@dataclass(frozen=True, kw_only=True)
class _Stored:
    """What every file of a results directory shares: its schema version, where it was read
    from, and the keys this code does not know (kept in ``extra``, written back unchanged)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ()

    schema_version: int = RECORD_VERSION
    path: str | None = field(default=None, compare=False, metadata=_LOCAL)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, metadata=_LOCAL)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in _stored_fields(type(self))})
        return out

    @classmethod
    def from_json(cls: type[S], data: Any, path: str | Path | None = None) -> S:
        """Read one from JSON data, checking what every reader relies on; errors name ``path``."""
        where = str(path) if path is not None else f"a {cls.__name__}"
        if not isinstance(data, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise RecordError(f"{where}: the record lacks {', '.join(missing)}")
        names = {f.name for f in _stored_fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs.setdefault("schema_version", 1)  # version-1 files had no such key
        cls._check(kwargs, where)
        return cls(**kwargs, path=None if path is None else str(path),
                   extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def _check(cls, kwargs: dict[str, Any], where: str) -> None:
        """Raise :class:`RecordError` (naming ``where``) for values readers cannot use."""


@dataclass(frozen=True)
class CellRecord(_Stored):
    """One finished grid cell: what ran, its metrics per evaluation seed, costs, provenance."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("dataset", "method", "per_seed")

    # --- which cell
    dataset: str
    method: str  # the method's key in the grid: its label, or its registered name
    #: One entry per evaluation seed: {"seed", "metrics": {metric: value}, "train_seconds",
    #: "final_loss", "lr_image", "lr_text"} and, with evaluation.eval_every, "curve": a list of
    #: {"epoch", "split", tr@1 .. ir@10, "mean"} (epoch 0 = before training). The headline
    #: evaluation: the grid's own student ("source") under the first protocol.
    per_seed: list[dict[str, Any]]
    budget: int | None = None  # None: the whole training set (the ``full`` reference)
    method_seed: int | None = None
    cell_id: str | None = None
    cell_hash: str | None = None  # bench.grid.spec.cell_hash: a record with another hash is stale
    status: str = "ok"
    # --- what ran
    method_name: str | None = None  # the registered name
    method_params: dict[str, Any] | None = None
    kind: str | None = None  # coreset | distillation | reference
    n_pairs: int | None = None
    eval_seeds: list[int] = field(default_factory=list)
    eval_split: str | None = None
    #: The dataset's size as evaluated: split -> {"images", "captions"} (empty in records written
    #: before it existed); the tables compare the test split with the published one.
    split_sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    eval_recipe: dict[str, Any] | None = None
    learned_lrs: dict[str, float] | None = None
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {"mean", "std"}
    eval_protocol: str | None = None  # the headline's protocol preset (None: older records, "suite")
    #: The same set evaluated on the other (student, protocol) pairs of the grid: each
    #: {"student", "protocol", "eval_recipe", "learned_lrs", "per_seed", "summary"}.
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    # --- cost (seconds, MB)
    method_cost: dict[str, Any] = field(default_factory=dict)
    eval_cost: dict[str, Any] = field(default_factory=dict)
    proxy_seconds: float | None = None
    expert_seconds: float | None = None
    expert_buffer_bytes: int | None = None
    expert_train_seconds: list[float | None] | None = None
    # --- what the method produced
    method_info: dict[str, Any] = field(default_factory=dict)  # free-form, from MethodOutput.info
    source_indices: list[int] | None = None
    set_file: str | None = None  # relative to the results directory
    set_bytes: int | None = None  # the set file's size and sha256 when written: a record whose
    set_sha256: str | None = None  # set file is gone or changed does not count as finished
    #: How the cell's parameters were chosen when the grid tuned them (bench/grid/tuning.py):
    #: {trials: [{label, params, val_mean, val_std, seconds}], chosen, sampler, seed, runs,
    #: eval_seeds, cost_s, audit?}; None: the config's fixed recipe.
    tuning: dict[str, Any] | None = None
    # --- provenance
    dataset_key: str | None = None  # content + text encoder (PreparedDataset.key)
    config: dict[str, Any] | None = None
    config_hash: str | None = None
    device: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    finished_at: str | None = None

    def __post_init__(self) -> None:
        if not self.kind:  # a version-1 record without it
            object.__setattr__(self, "kind", self.inferred_kind())

    @classmethod
    def _check(cls, kwargs: dict[str, Any], where: str) -> None:
        per_seed = kwargs["per_seed"]
        if not isinstance(per_seed, list) or not all(
                isinstance(s, dict) and isinstance(s.get("metrics"), dict) for s in per_seed):
            raise RecordError(f"{where}: 'per_seed' must be a list of objects with a 'metrics' object")
        if kwargs.get("status", "ok") == "ok" and not per_seed:
            raise RecordError(f"{where}: 'per_seed' is empty: a finished record needs a result per evaluation seed")

    def inferred_kind(self) -> str:
        """``kind``; for version-1 records without it: no budget -> reference, a built-in
        coreset name -> coreset, anything else -> distillation."""
        if self.kind:
            return self.kind
        if self.budget is None:
            return "reference"
        return "coreset" if self.method in KNOWN_CORESETS else "distillation"

    @property
    def cell(self) -> tuple[str, str, int | None, int | None]:
        """(dataset, method, budget, method seed): two records with one cell are one result twice."""
        return (self.dataset, self.method, self.budget, self.method_seed)

    @property
    def name(self) -> str:
        """How messages refer to the record: its file, else its cell."""
        return self.path or self.cell_id or "/".join(str(v) for v in self.cell)

    def runs(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """(student, protocol) -> its ``per_seed`` entries, the headline first."""
        out = {("source", self.eval_protocol or "suite"): self.per_seed}
        for entry in self.evaluations:
            out[(entry["student"], entry["protocol"])] = entry["per_seed"]
        return out

    def set_seconds(self) -> float | None:
        """What producing the set cost: this run's method time plus what the earlier work it
        stands on cost: the set of another cell it evaluated (``set_of``, the tuning trial
        of a test cell: ``set_seconds_earlier``), or the matching of the earlier runs whose
        checkpoint it continued (``matching_seconds_earlier``). A test cell that reuses its
        trial's set spends about a second itself, and its ``method_cost`` says so; this says
        what its set took. Records written before these existed count at least their whole
        matching time."""
        own = self.method_cost.get("seconds")
        if own is None:
            return None
        info = self.method_info
        if "set_of" in info:
            return float(own) + float(info.get("set_seconds_earlier") or 0.0)
        earlier = info.get("matching_seconds_earlier")
        if earlier is not None:
            return float(own) + float(earlier)
        return max(float(own), float(info.get("matching_seconds") or 0.0))

    def metric_summary(self, metric: str) -> tuple[float, float]:
        """(mean, std) of ``metric`` over the evaluation seeds."""
        entry = self.summary.get(metric)
        if entry:
            return float(entry["mean"]), float(entry["std"])
        values = [float(s["metrics"][metric]) for s in self.per_seed if s["metrics"].get(metric) is not None]
        if not values:
            return float("nan"), float("nan")
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        return mean, var ** 0.5


@dataclass(frozen=True)
class FailureRecord(_Stored):
    """The last failure of a cell (``records/<cell>.failed.json``): why, and under which hash."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("cell_id", "error")

    cell_id: str
    error: str  # "<ExceptionType>: <message>"
    attempts: int = 0  # 0: never started (an input it needs could not be made)
    traceback: str = ""
    failed_at: str | None = None
    cell_hash: str | None = None  # the hash of the config that failed (None before version 2)
    status: str = "failed"

    @property
    def reason(self) -> str:
        """The error's first line (what the console and tables show)."""
        return self.error.splitlines()[0] if self.error else "unknown error"


@dataclass(frozen=True)
class GridManifest(_Stored):
    """``grid.json``: the grid last run into a results directory and the hash of each of its
    cells. Tables show exactly the records that match it (never a stale or foreign one)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("cells",)

    cells: dict[str, str]  # cell id -> cell hash, in plan order
    name: str | None = None
    config_hash: str | None = None
    written_at: str | None = None

    @classmethod
    def _check(cls, kwargs: dict[str, Any], where: str) -> None:
        if not isinstance(kwargs["cells"], dict):
            raise RecordError(f"{where}: 'cells' must map cell ids to hashes")
