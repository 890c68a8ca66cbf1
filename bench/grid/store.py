"""The results store: one JSON record per finished cell, each produced set beside it.

Layout under ``results_dir``:
  grid.json                    the grid last run here: its cells and their hashes
  records/<cell>.json          a finished cell (written atomically: present means complete)
  records/<cell>.failed.json   the last failure of a cell, with its traceback
  sets/<cell>.pt               the pair set the method produced (re-evaluate / inspect it)
  pictures/<cell>.png          the first pairs of that set with their captions
  stale/...                    records (and their sets, pictures) of an older recipe of a cell,
                               moved aside when the cell is planned again; never shown

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

from bench.core.errors import UserError
from bench.core.io import torch_save_atomic, write_json_atomic
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


def records_dir(results_dir: str | os.PathLike[str]) -> Path:
    """``<results_dir>/records`` when it exists, else ``results_dir`` itself (a records dir)."""
    root = Path(results_dir)
    return root / "records" if (root / "records").is_dir() else root


def read_records(results_dir: str | os.PathLike[str]) -> list[CellRecord]:
    """Every finished record (``status == "ok"``) of a results (or records) directory, by
    file name. Skipped: hidden files (temporary files of atomic writes), ``*.failed.json``,
    unfinished records. Raises :class:`RecordError` naming the file for an unreadable one."""
    root = Path(results_dir)
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
    that belong to no cell of the grid or to an older recipe of one."""

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
        """A cell is finished when its record exists, parses, and was made by the same config."""
        record = self.read_record(cell)
        return record is not None and record.cell_hash == cell_hash

    def write_record(self, cell: Cell | str, record: CellRecord) -> Path:
        path = write_json_atomic(self.record_path(cell), record.to_json())
        self.failure_path(cell).unlink(missing_ok=True)
        return path

    def write_failure(self, cell: Cell | str, failure: FailureRecord) -> Path:
        return write_json_atomic(self.failure_path(cell), failure.to_json())

    def retire(self, cell: Cell | str) -> list[Path]:
        """Move the cell's record, set and pictures to ``stale/`` (an older recipe's result:
        kept for inspection, never shown as current); returns the new paths."""
        moved = []
        for path in (self.record_path(cell), self.set_path(cell), self.picture_path(cell),
                     self.picture_path(cell, "loss")):
            if path.is_file():
                target = self.root / "stale" / path.relative_to(self.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
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
        other cell has no number: ``failed: <error>``, ``stale: ...``, ``its record cannot be
        read`` or ``not run``. Other records in ``records/`` are only counted (``ignored``)."""
        current, missing = [], {}
        for cell_id, cell_hash in cells.items():
            record = self.read_record(cell_id)
            if record is not None and record.cell_hash == cell_hash:
                current.append(record)
                continue
            failure = self.read_failure(cell_id)
            if failure is not None and failure.cell_hash in (cell_hash, None):
                missing[cell_id] = f"failed: {failure.reason}"
            elif record is not None:
                missing[cell_id] = "stale: its record was made by another recipe"
            elif self.record_path(cell_id).is_file():
                missing[cell_id] = "its record cannot be read"
            else:
                missing[cell_id] = "not run"
        shown = {r.cell_id for r in current}
        others = [p for p in _record_files(self.root / "records") if p.stem not in shown]
        return GridResults(current, missing, ignored=len(others))
