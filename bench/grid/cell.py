"""One grid cell end to end: prepare its inputs, run its method, evaluate, write its record.

Every executor (in-process or a Ray task) calls :func:`execute_cell`, so there is one
definition of what a cell does. The record is written last and atomically: a record on disk
means the set and pictures are there too.
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from bench.core.config import to_dict
from bench.core.env import git_commit, machine_info, pick_device
from bench.core.errors import error_text, strip_terminal_codes
from bench.core.io import file_digest, stable_hash
from bench.core.measure import Cost, measure
from bench.data.datasets import PreparedDataset, prepare_dataset
from bench.data.pairs import saturation
from bench.distill.experts import TrajectoryBuffer, ensure_experts, open_buffer
from bench.grid import set_index
from bench.grid.pictures import write_pictures
from bench.grid.record import CellRecord, FailureRecord, timestamp
from bench.grid.spec import Cell, EvalVariant, GridConfig, ResolvedCell, resolve_cell
from bench.grid.store import ResultStore
from bench.methods_api import Method, MethodContext, MethodOutput, index_problem
from bench.protocol.evaluate import CurvePlan, SeedResult, evaluate_pair_set, summarize
from bench.protocol.proxy import ProxyRun, load_or_compute_proxy

_PREPARED: dict[str, PreparedDataset] = {}  # per process: Ray reuses workers across tasks


def prepared(grid: GridConfig, name: str, progress: bool = False) -> PreparedDataset:
    """Dataset ``name`` of the grid with its caption embeddings, prepared once per process."""
    cfg = grid.dataset(name)
    key = stable_hash({"dataset": to_dict(cfg), "cache": str(Path(grid.cache_dir).resolve())})
    if key not in _PREPARED:
        _PREPARED[key] = prepare_dataset(cfg, grid.cache_dir, "cpu", progress)
    return _PREPARED[key]


def load_proxy(grid: GridConfig, data: PreparedDataset, seed: int, device: torch.device, progress: bool) -> ProxyRun:
    """The grid's proxy run of ``data`` for method seed ``seed`` (trained, or read from the cache)."""
    return load_or_compute_proxy(data, grid.model, grid.proxy, grid.evaluation.full_train, seed, device,
                                 grid.cache_dir, progress)


class SharedArtifacts:
    """The proxy run and the expert buffer a method declared it uses, made ready (trained or
    loaded from the cache) before the method's timing starts, with what that took."""

    def __init__(self, grid: GridConfig, cls: type[Method] | None, data: PreparedDataset, seed: int,
                 device: torch.device, progress: bool) -> None:
        """``cls`` None: the method does not run (its set is already made), nothing to ready."""
        self.grid, self.data, self.seed, self.device, self.progress = grid, data, seed, device, progress
        self.proxy_seconds: float | None = None
        self.expert_seconds: float | None = None
        self._proxy: ProxyRun | None = None
        self.buffer: TrajectoryBuffer | None = None
        if cls is not None and cls.uses_proxy:
            start = time.perf_counter()
            self._proxy = self.proxy()
            self.proxy_seconds = time.perf_counter() - start
        if cls is not None and cls.uses_experts:
            start = time.perf_counter()
            self.buffer = ensure_experts(data, grid.model, grid.experts, grid.evaluation.full_train,
                                         grid.cache_dir, device, progress)
            self.expert_seconds = time.perf_counter() - start

    def proxy(self) -> ProxyRun:
        return self._proxy or load_proxy(self.grid, self.data, self.seed, self.device, self.progress)

    def experts(self) -> TrajectoryBuffer:
        g = self.grid
        return self.buffer or open_buffer(self.data, g.model, g.experts, g.evaluation.full_train, g.cache_dir)


def check_output(output: MethodOutput, cell: Cell, kind: str, n_pairs: int) -> None:
    """What every method must return: a :class:`MethodOutput` of ``budget`` pairs whose real
    pairs (``source_indices``) are distinct training pairs (a set of ten copies of pair 0 would
    be scored as a 10-pair coreset)."""
    if not isinstance(output, MethodOutput):
        raise TypeError(f"method {cell.method!r} returned {type(output).__name__}, not MethodOutput")
    if kind != "reference" and len(output.pairs) != cell.budget:
        raise ValueError(f"method {cell.method!r} returned {len(output.pairs)} pairs for budget {cell.budget}")
    if output.source_indices is not None:
        problem = index_problem(output.source_indices.numpy(), n_pairs)
        if problem:
            raise ValueError(f"method {cell.method!r} returned pairs whose source_indices {problem}")
    what = non_finite_part(output)
    if what:
        raise ValueError(f"method {cell.method!r} returned non-finite values (NaN or infinity) in {what}; "
                         "the method diverged or has a bug (the set is not evaluated)")


def non_finite_part(output: MethodOutput) -> str | None:
    """The first part of a method's output holding NaN or infinity (its images, text
    embeddings, soft targets or learned learning rates), or None: found here, the failure
    names the method and the tensor, not the evaluation's training step."""
    pairs = output.pairs
    tensors = {"pairs.images": pairs.images, "pairs.text_emb": pairs.text_emb,
               "pairs.soft_targets.matrix": None if pairs.soft_targets is None else pairs.soft_targets.matrix}
    for name, tensor in tensors.items():
        if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"{name} ({int((~torch.isfinite(tensor)).sum())} of {tensor.numel()} values)"
    for side, lr in (output.learned_lrs or {}).items():
        if not math.isfinite(float(lr)):
            return f"learned_lrs[{side!r}] ({lr})"
    return None


#: The fraction of a synthetic set's pixel values beyond the range of real images
#: (:func:`bench.data.pairs.saturation`) above which its cell warns.
SATURATION_WARN_FRACTION = 0.2


class SaturationWarning(UserWarning):
    """A method's synthetic images have largely left the range of real images."""


def warn_if_saturated(output: MethodOutput, cell: Cell) -> float:
    """Warn (once per cell: the text names it) when more than :data:`SATURATION_WARN_FRACTION`
    of the set's pixel values lie outside [0, 1] after undoing the normalisation: its pictures
    then show clipped colours and the evaluation trains on inputs no real image gives. Returns
    the fraction (0 for real pixels)."""
    fraction, low, high = saturation(output.pairs.images)
    if fraction > SATURATION_WARN_FRACTION:
        warnings.warn(
            f"method {cell.method!r} (cell {cell.id}): {fraction:.0%} of its images' pixel values lie outside "
            f"the range of real images, [0, 1] after undoing the normalisation (from {low:.2f} to {high:.2f}); "
            "its pictures clip them; a smaller image step size or a trust region (e.g. max_update) keeps "
            "them in range", SaturationWarning, stacklevel=2)
    return fraction


class MethodExit(RuntimeError):
    """A method called ``sys.exit()`` (or raised SystemExit) inside ``run()``: a failure of its
    cell, not a request to end the grid."""


def run_method(method: Method, ctx: MethodContext, budget: int, seed: int, key: str) -> MethodOutput:
    """``method.run``, with a SystemExit turned into a failure of the cell (left alone, it would
    end the driver with status 0, no records and no failure records)."""
    try:
        return method.run(ctx, budget, seed)
    except SystemExit as exc:
        raise MethodExit(f"method {key!r} called sys.exit({exc.code!r}) inside run(); a method must "
                         "return a MethodOutput or raise an exception") from None


def save_set(store: ResultStore, cell: Cell, output: MethodOutput, record: CellRecord) -> CellRecord:
    """Write the cell's set and return the record naming it with its size and sha256 (a record
    counts as finished only while its set file is as written)."""
    path = store.save_set(cell, output)
    size, digest = file_digest(path)
    return replace(record, set_file=str(path.relative_to(store.root)), set_bytes=size, set_sha256=digest)


def build_record(grid: GridConfig, resolved: ResolvedCell, data: PreparedDataset, output: MethodOutput,
                 evaluations: list[tuple[EvalVariant, list[SeedResult]]], costs: tuple[Cost, Cost],
                 shared: SharedArtifacts, device: torch.device) -> CellRecord:
    """The record of a finished cell (the one place a :class:`CellRecord` is filled). The
    first evaluation is the headline; the others go to ``evaluations``."""
    cell, cls, buffer = resolved.cell, resolved.method_cls, shared.buffer
    (headline, results), others = evaluations[0], evaluations[1:]
    train_cfg = headline.train
    return CellRecord(
        dataset=cell.dataset, method=cell.method, per_seed=[r.as_dict() for r in results],
        budget=cell.budget, method_seed=cell.method_seed, cell_id=cell.id, cell_hash=resolved.hash,
        method_name=cls.name, method_params=to_dict(resolved.params), kind=cls.kind, n_pairs=len(output.pairs),
        eval_seeds=list(grid.evaluation.seeds), eval_split=grid.evaluation.split, eval_recipe=to_dict(train_cfg),
        split_sizes={s: {"images": data.dataset.split(s).n_images, "captions": data.dataset.split(s).n_captions}
                     for s in ("train", "val", "test")},
        learned_lrs=output.learned_lrs, summary=summarize(results), eval_protocol=headline.protocol.name,
        evaluations=[{"student": v.student, "protocol": v.protocol.name, "eval_recipe": to_dict(v.train),
                      "learned_lrs": learned_lrs_of(v, output), "per_seed": [r.as_dict() for r in rs],
                      "summary": summarize(rs)} for v, rs in others],
        method_cost=costs[0].as_dict(), eval_cost=costs[1].as_dict(),
        proxy_seconds=shared.proxy_seconds, expert_seconds=shared.expert_seconds,
        expert_buffer_bytes=None if buffer is None else buffer.size_bytes(),
        expert_train_seconds=None if buffer is None else buffer.train_seconds(),
        method_info=output.info,
        source_indices=None if output.source_indices is None else output.source_indices.tolist(),
        dataset_key=data.key, config=to_dict(grid), config_hash=grid.config_hash, device=str(device),
        machine=machine_info(), git_commit=git_commit(), finished_at=timestamp(),
    )


def execute_cell(grid: GridConfig, cell: Cell, progress: bool = False) -> CellRecord:
    """Run one cell end to end: method (or the set another cell already made of the same
    inputs: :mod:`bench.grid.set_index`), evaluation, then its set, pictures and record."""
    store = ResultStore(grid.results_dir)
    device = pick_device(grid.device)
    data = prepared(grid, cell.dataset, progress)
    resolved = resolve_cell(grid, cell)
    cls = resolved.method_cls
    seed = 0 if cell.method_seed is None else cell.method_seed
    reference = cls.kind == "reference"  # the full set is the training split itself: nothing to save
    index_key = None if reference else set_index.set_key(resolved.set_hash, device)
    made = None if index_key is None else set_index.find(grid.cache_dir, cell.dataset, cls.name, index_key)
    shared = SharedArtifacts(grid, cls if made is None else None, data, seed, device, progress)
    with measure(device) as method_cost:
        if made is None:
            ctx = MethodContext(data, grid.model, device, Path(grid.cache_dir), shared.proxy, progress, shared.experts)
            output = run_method(cls(resolved.params), ctx, cell.budget if cell.budget is not None
                                else data.train.n_captions, seed, cell.method)
        else:
            output = replace(made.output, info={**made.output.info, "set_of": made.cell_id,
                                                "set_seconds_earlier": made.seconds})
    check_output(output, cell, cls.kind, data.train.n_captions)
    warn_if_saturated(output, cell)
    with measure(device) as eval_cost:
        evaluations = evaluate_variants(grid, data, output, reference, device, progress, cell.id)
    record = build_record(grid, resolved, data, output, evaluations, (method_cost, eval_cost), shared, device)
    if not reference:
        record = save_set(store, cell, output, record)
        write_pictures(store, cell.id, data, output)
    store.write_record(cell, record)  # last: a record on disk means everything else is there
    if made is None and index_key is not None:  # after the record: the set file is final
        set_index.remember(grid.cache_dir, cell.dataset, cls.name, index_key, store.set_path(cell), cell.id,
                           record.set_seconds())
    return record


def learned_lrs_of(variant: EvalVariant, output: MethodOutput) -> dict[str, float] | None:
    """The learned step sizes a variant trains with (its protocol's rule; none off the source student)."""
    return variant.protocol.lrs(output.learned_lrs) if variant.use_learned_lrs else None


def evaluate_variants(grid: GridConfig, data: PreparedDataset, output: MethodOutput, reference: bool,
                      device: torch.device, progress: bool, description: str
                      ) -> list[tuple[EvalVariant, list[SeedResult]]]:
    """The set evaluated on every (student, protocol) of the grid, with the same seeds."""
    ev = grid.evaluation
    split = data.dataset.split(ev.split)
    curve_splits = {name: (data.dataset.split(name), data.text_emb[name]) for name in ev.curve_splits}
    out = []
    for variant in ev.variants(grid.model, reference):
        curve = None if variant.curve_epochs is None else CurvePlan(variant.curve_epochs, curve_splits)
        label = description if variant.key == ("source", ev.protocol[0]) else f"{description} {'/'.join(variant.key)}"
        results = evaluate_pair_set(output.pairs, variant.model, variant.train, split, data.text_emb[ev.split],
                                    ev.seeds, device, learned_lrs=learned_lrs_of(variant, output),
                                    progress=progress, description=label, curve=curve)
        out.append((variant, results))
    return out


def failure_record(cell: Cell, cell_hash: str, exc: BaseException, attempts: int) -> FailureRecord:
    """What ``records/<cell>.failed.json`` says: the error, its traceback, the attempts made
    (0: never started) and the hash of the config that failed. A Ray task error is described
    by its cause (the method's own error), and no terminal codes are kept."""
    return FailureRecord(cell_id=cell.id, error=error_text(exc), attempts=attempts,
                         traceback=strip_terminal_codes("".join(traceback.format_exception(exc))),
                         failed_at=timestamp(), cell_hash=cell_hash)
