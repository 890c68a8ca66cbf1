"""The results store: one JSON record per finished cell, each produced set beside it.

Layout under ``results_dir``:
  grid.json                    the grid last run here: its cells and their hashes
  records/<cell>.json          a finished cell (written atomically: present means complete)
  records/<cell>.failed.json   the last failure of a cell, with its traceback
  sets/<cell>.pt               the pair set the method produced (re-evaluate / inspect it)
  pictures/<cell>.png          the first pairs of that set with their captions
  stale/<hash>/...             records (and their sets, pictures) of an older recipe of a cell,
                               moved aside when the cell is planned again, one folder per
                               recipe (the old record's cell hash); never shown, never replaced

What a report shows is decided here, once (:meth:`ResultStore.grid_results`): the records of
the cells of one grid whose hash matches the grid's, and for every other cell of the grid why
it has no number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core.errors import UserError, strip_terminal_codes
from bench.core.io import (
    UnusableDirectoryError,
    file_digest,
    os_error_reason,
    torch_save_atomic,
    write_json_atomic,
)
from bench.grid.record import (
    CellRecord,
    FailureRecord,
    GridManifest,
    RecordError,
    timestamp,
)

if TYPE_CHECKING:  # the store itself needs only ids; keeps `run_bench.py table` free of torch
    from bench.grid.spec import Cell
    from bench.methods_api import MethodOutput

MANIFEST = "grid.json"
FAILED_SUFFIX = ".failed.json"


class MissingResultsError(UserError, FileNotFoundError):
    """A results directory that does not exist."""


def _id(cell: Cell | str) -> str:
    return cell if isinstance(cell, str) else cell.id


def _record_files(directory: Path) -> list[Path]:
    """The cell records in a records directory: not the hidden temporary files of atomic
    writes, not ``*.failed.json``."""
    return [p for p in sorted(directory.glob("*.json"))
            if not p.name.startswith(".") and not p.name.endswith(FAILED_SUFFIX)]


def _read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; a :class:`RecordError` naming the file when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: cannot read {what}: {exc}") from exc
    except RecursionError:
        raise RecordError(f"{path}: cannot read {what}: nested too deeply") from None


def records_dir(results_dir: str | os.PathLike[str]) -> Path:
    """``<results_dir>/records`` when it exists, else ``results_dir`` itself (a records dir)."""
    root = Path(results_dir)
    return root / "records" if (root / "records").is_dir() else root


def read_records(results_dir: str | os.PathLike[str]) -> list[CellRecord]:
    """Every finished record (``status == "ok"``) of a results (or records) directory, by
    file name. Skipped: hidden files (temporary files of atomic writes), ``*.failed.json``,
    unfinished records. Raises :class:`RecordError` naming the file for an unreadable one."""
    root = Path(results_dir)
    if root.exists() and not root.is_dir():
        raise MissingResultsError(f"{root} is a file, not a results directory")
    if not root.is_dir():
        raise MissingResultsError(f"results directory {root} does not exist")
    records = []
    for path in _record_files(records_dir(root)):
        data = _read_json(path, "result record")
        if isinstance(data, dict) and data.get("status", "ok") != "ok":
            continue
        records.append(CellRecord.from_json(data, path))
    return records


@dataclass(frozen=True)
class GridResults:
    """The records a report of one grid shows, and why the other cells of the grid have none
    (cell id -> one-line reason, in plan order); ``ignored`` counts records in the directory
    that belong to no cell of the grid (a cell of the grid is reported in ``missing`` only)."""

    records: list[CellRecord]
    missing: dict[str, str]
    ignored: int = 0

    def missing_line(self) -> str | None:
        """``missing: a (failed: ...); b (not run)`` for captions and notes, or None."""
        if not self.missing:
            return None
        return "missing: " + "; ".join(f"{cell} ({why})" for cell, why in self.missing.items())


class ResultStore:
    def __init__(self, results_dir: str | Path) -> None:
        self.root = Path(results_dir)

    # ------------------------------------------------------------------ paths
    def record_path(self, cell: Cell | str) -> Path:
        return self.root / "records" / f"{_id(cell)}.json"

    def failure_path(self, cell: Cell | str) -> Path:
        return self.root / "records" / f"{_id(cell)}{FAILED_SUFFIX}"

    def set_path(self, cell: Cell | str) -> Path:
        return self.root / "sets" / f"{_id(cell)}.pt"

    def picture_path(self, cell: Cell | str, suffix: str = "") -> Path:
        """``pictures/<cell>.png``, or ``pictures/<cell>_<suffix>.png`` (e.g. the loss curve)."""
        return self.root / "pictures" / f"{_id(cell)}{'_' + suffix if suffix else ''}.png"

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    # ------------------------------------------------------------------ cells
    def read_record(self, cell: Cell | str) -> CellRecord | None:
        """The cell's finished record, or None (absent, unreadable, unfinished)."""
        path = self.record_path(cell)
        try:
            record = CellRecord.from_json(_read_json(path, "result record"), path)
        except (RecordError, TypeError):
            return None
        return record if record.status == "ok" else None

    def read_failure(self, cell: Cell | str) -> FailureRecord | None:
        path = self.failure_path(cell)
        try:
            return FailureRecord.from_json(_read_json(path, "failure record"), path)
        except (RecordError, TypeError):
            return None

    def finished(self, cell: Cell | str, cell_hash: str) -> bool:
        """A cell is finished when its record exists, parses, was made by the same config, and
        the set file it names is there as it was written."""
        record = self.read_record(cell)
        return record is not None and record.cell_hash == cell_hash and self.set_problem(record) is None

    def set_problem(self, record: CellRecord, check_hash: bool = True) -> str | None:
        """Why the set file ``record`` names cannot be trusted (gone, another size, another
        sha256), or None (also for a record without a set: the ``full`` reference). Records
        written before sizes were recorded are only checked to have their file."""
        if record.set_file is None:
            return None
        path = self.root / record.set_file
        try:
            size = path.stat().st_size
        except OSError:
            return f"its set file {path} is missing"
        if record.set_bytes is not None and size != record.set_bytes:
            return f"its set file {path} has {size} bytes, the record says {record.set_bytes} (truncated or replaced)"
        if check_hash and record.set_sha256 is not None and file_digest(path)[1] != record.set_sha256:
            return f"its set file {path} has changed since the record was written"
        return None

    def with_sets(self, records: list[CellRecord]) -> tuple[list[CellRecord], dict[str, str]]:
        """``records`` split by the run's rule for a set file (:meth:`set_problem`): those whose
        set is as written, and for the others ``name -> not finished: <why>``."""
        kept, missing = [], {}
        for record in records:
            problem = self.set_problem(record)
            if problem is None:
                kept.append(record)
            else:
                missing[record.cell_id or record.name] = f"not finished: {problem}"
        return kept, missing

    def write_record(self, cell: Cell | str, record: CellRecord) -> Path:
        path = write_json_atomic(self.record_path(cell), record.to_json())
        self.failure_path(cell).unlink(missing_ok=True)
        return path

    def write_failure(self, cell: Cell | str, failure: FailureRecord) -> Path:
        return write_json_atomic(self.failure_path(cell), failure.to_json())

    def retire(self, cell: Cell | str, cell_hash: str | None) -> list[Path]:
        """Move the cell's record, set and pictures to ``stale/<cell_hash>/`` (the hash of the
        recipe that made them: kept for inspection, never shown as current); returns the new
        paths. Every generation is kept: a folder that already holds this cell's files (the
        same recipe retired before) gets a numbered sibling, ``stale/<hash>-2/``."""
        files = [p for p in (self.record_path(cell), self.set_path(cell), self.picture_path(cell),
                             self.picture_path(cell, "loss")) if p.is_file()]
        base = self.root / "stale" / (cell_hash or "unknown-recipe")
        generation, n = base, 1
        while any((generation / p.relative_to(self.root)).exists() for p in files):
            n += 1
            generation = base.with_name(f"{base.name}-{n}")
        moved = []
        for path in files:
            target = generation / path.relative_to(self.root)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
            except OSError as exc:
                raise UnusableDirectoryError(f"cannot move the stale file {path} to {target}: "
                                             f"{os_error_reason(exc)}") from None
            moved.append(target)
        return moved

    def save_set(self, cell: Cell | str, output: MethodOutput) -> Path:
        pairs = output.pairs
        return torch_save_atomic(self.set_path(cell), {
            "images": pairs.images, "image_index": pairs.image_index, "text_emb": pairs.text_emb,
            "source_indices": pairs.source_indices, "learned_lrs": output.learned_lrs,
            "soft_targets": None if pairs.soft_targets is None else pairs.soft_targets.matrix,
            "soft_target_loss": None if pairs.soft_targets is None else pairs.soft_targets.loss, "info": output.info,
        })

    def load_set(self, cell: Cell | str) -> dict[str, Any]:
        import torch

        return torch.load(self.set_path(cell), weights_only=False)

    # ------------------------------------------------------------------ the grid
    def write_manifest(self, name: str, config_hash: str, cells: Mapping[str, str]) -> Path:
        manifest = GridManifest(cells=dict(cells), name=name, config_hash=config_hash,
                                written_at=timestamp())
        return write_json_atomic(self.manifest_path, manifest.to_json())

    def read_manifest(self) -> GridManifest | None:
        """The grid last run here, or None (no ``grid.json``: results of an older version)."""
        if not self.manifest_path.is_file():
            return None
        return GridManifest.from_json(_read_json(self.manifest_path, "the grid manifest"), self.manifest_path)

    def grid_results(self, cells: Mapping[str, str]) -> GridResults:
        """The current records of the grid whose cells (id -> hash) are given, and why each
        other cell has no number: ``failed: <error>``, ``not finished: its set file ...``,
        ``stale: ...``, ``its record cannot be read`` or ``not run``. A set file is checked as
        a run checks it before skipping a cell (size and sha256: a set changed in place, same
        size, is not current). Records of no cell of the grid are only counted (``ignored``)."""
        current, missing = [], {}
        for cell_id, cell_hash in cells.items():
            record = self.read_record(cell_id)
            damaged = None if record is None or record.cell_hash != cell_hash else self.set_problem(record)
            if record is not None and record.cell_hash == cell_hash and damaged is None:
                current.append(record)
                continue
            failure = self.read_failure(cell_id)
            if failure is not None and failure.cell_hash in (cell_hash, None):
                missing[cell_id] = f"failed: {strip_terminal_codes(failure.reason)}"
            elif record is not None and record.cell_hash == cell_hash:
                missing[cell_id] = f"not finished: {damaged}"
            elif record is not None:
                missing[cell_id] = "stale: its record was made by another recipe"
            elif self.record_path(cell_id).is_file():
                missing[cell_id] = "its record cannot be read"
            else:
                missing[cell_id] = "not run"
        # A cell of the grid without a current record is named once, in ``missing``.
        others = [p for p in _record_files(self.root / "records") if p.stem not in cells]
        return GridResults(current, missing, ignored=len(others))


def set_output(saved: Mapping[str, Any]) -> MethodOutput:
    """The method output a set file holds (what :meth:`ResultStore.save_set` wrote): pairs with
    their soft targets, learned step sizes and the method's info, as the method returned them."""
    from bench.data.pairs import PairSet, SoftTargets
    from bench.methods_api import MethodOutput

    soft = saved.get("soft_targets")
    pairs = PairSet(saved["images"], saved["image_index"], saved["text_emb"], saved.get("source_indices"),
                    None if soft is None else SoftTargets(soft, saved["soft_target_loss"]))
    return MethodOutput(pairs, saved.get("learned_lrs"), dict(saved.get("info") or {}))
