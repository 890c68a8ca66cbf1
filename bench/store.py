"""The results store: one JSON record per finished cell, each produced set beside it.

Layout under ``results_dir``:
  records/<cell>.json          a finished cell (written atomically: present means complete)
  records/<cell>.failed.json   the last failure of a cell, with its traceback
  sets/<cell>.pt               the pair set the method produced (re-evaluate / inspect it)
  pictures/<cell>.png          the first pairs of that set with their captions
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bench.grid import Cell
from bench.io import torch_save_atomic, write_json_atomic
from bench.methods_api import MethodOutput


class ResultStore:
    def __init__(self, results_dir: str | Path) -> None:
        self.root = Path(results_dir)

    def record_path(self, cell: Cell) -> Path:
        return self.root / "records" / f"{cell.id}.json"

    def failure_path(self, cell: Cell) -> Path:
        return self.root / "records" / f"{cell.id}.failed.json"

    def set_path(self, cell: Cell) -> Path:
        return self.root / "sets" / f"{cell.id}.pt"

    def picture_path(self, cell: Cell) -> Path:
        return self.root / "pictures" / f"{cell.id}.png"

    def finished(self, cell: Cell, cell_hash: str) -> bool:
        """A cell is finished when its record exists, parses, and was made by the same config."""
        path = self.record_path(cell)
        if not path.is_file():
            return False
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return record.get("status") == "ok" and record.get("cell_hash") == cell_hash

    def write_record(self, cell: Cell, record: dict[str, Any]) -> Path:
        path = write_json_atomic(self.record_path(cell), record)
        self.failure_path(cell).unlink(missing_ok=True)
        return path

    def write_failure(self, cell: Cell, info: dict[str, Any]) -> Path:
        return write_json_atomic(self.failure_path(cell), {"status": "failed", **info})

    def save_set(self, cell: Cell, output: MethodOutput) -> Path:
        pairs = output.pairs
        return torch_save_atomic(self.set_path(cell), {
            "images": pairs.images, "image_index": pairs.image_index, "text_emb": pairs.text_emb,
            "source_indices": pairs.source_indices, "learned_lrs": output.learned_lrs,
            "soft_targets": output.soft_targets, "info": output.info,
        })

    def load_set(self, cell: Cell) -> dict[str, Any]:
        return torch.load(self.set_path(cell), weights_only=False)
