"""Sets already made, found by what makes them, so a cell evaluates a set instead of making it
again.

A tuning trial makes a set on the training pairs and scores it on val; the test cell of the
chosen values makes the same set and scores it on test. Trajectory methods found their trial's
checkpoint, but every other method made its set again (mdm and covmatch: minutes a cell at
Flickr30K's shape), and so did each cell of a grid whose evaluation recipe changed. Now each
cell that makes a set keeps it in ``<cache_dir>/sets/<dataset>-<method>-<key>.pt`` (a hard
link to the set file it wrote, a copy where links are impossible: the bytes stay when the
results file is replaced or moved to ``stale/``) with a ``.json`` beside it (the producing
cell, what making the set cost, the file's sha256). The key is the cell's *set hash*
(:attr:`bench.grid.spec.ResolvedCell.set_hash`: dataset, model, method and parameters,
budget, seed, the proxy and expert recipes it reads; not the evaluation, not the entry's
label) on the device type. A later cell with that key evaluates the kept set.

So the set a test cell scores *is* the set its trial was chosen by, bit for bit, not one made
again (which on another thread count can differ in the last bits). The record says where its
set came from (``method_info.set_of``) and what it cost to make (``set_seconds_earlier``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.core.io import atomic_path, bytes_hash, file_digest, write_json_atomic
from bench.grid.store import set_output
from bench.methods_api import MethodOutput

DIR = "sets"


@dataclass(frozen=True)
class MadeSet:
    """A kept set: the method's output as the producing cell returned it, that cell's id, and
    what making it cost (seconds; None when not recorded)."""

    output: MethodOutput
    cell_id: str
    seconds: float | None


def set_key(set_hash: str, device: torch.device) -> str:
    """The index key: the cell's set hash on this device type (a set made on a GPU is not the
    set a CPU would make)."""
    return bytes_hash(set_hash.encode(), torch.device(device).type.encode())


def entry_paths(cache_dir: str | os.PathLike[str], dataset: str, method: str, key: str) -> tuple[Path, Path]:
    """The (set, description) files of one kept set."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{dataset}-{method}")
    stem = Path(cache_dir) / DIR / f"{safe}-{key}"
    return stem.with_suffix(".pt"), stem.with_suffix(".json")


def remember(cache_dir: str | os.PathLike[str], dataset: str, method: str, key: str, set_file: Path,
             cell_id: str, seconds: float | None) -> None:
    """Keep ``set_file`` (written and complete) under the key, with who made it and at what cost."""
    kept, meta = entry_paths(cache_dir, dataset, method, key)
    meta.unlink(missing_ok=True)  # an old description must never vouch for a new file
    with atomic_path(kept) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(set_file, tmp)  # shares the bytes; the results file may be replaced or moved later
        except OSError:
            shutil.copyfile(set_file, tmp)
    size, digest = file_digest(kept)
    write_json_atomic(meta, {"bytes": size, "sha256": digest, "cell_id": cell_id, "seconds": seconds})


def find(cache_dir: str | os.PathLike[str], dataset: str, method: str, key: str) -> MadeSet | None:
    """The set kept under the key, or None: none kept, or the file is no longer as written (then
    the cell makes its set and keeps it again)."""
    kept, meta = entry_paths(cache_dir, dataset, method, key)
    try:
        entry = json.loads(meta.read_text(encoding="utf-8"))
        if file_digest(kept) != (entry["bytes"], entry["sha256"]):
            return None
        output = set_output(torch.load(kept, weights_only=False))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None
    seconds = entry.get("seconds")
    return MadeSet(output, str(entry.get("cell_id")), None if seconds is None else float(seconds))
