"""Atomic file writes and content hashing.

Every artifact (caches, result records, buffers) is written to a temporary file in the same
directory and renamed into place, so a crash never leaves a half-written file under the final
name and readers never see a partial result.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


TEMP_GLOB = ".*.tmp"  # the names atomic_path gives its temporary files


def remove_stale_temp_files(root: str | os.PathLike[str], older_than_s: float = 0.0) -> list[Path]:
    """Delete temporary files that a killed writer left under ``root`` (only those not
    modified for ``older_than_s`` seconds, so a live writer elsewhere keeps its file)."""
    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time()
    removed = []
    for path in root.rglob(TEMP_GLOB):
        try:
            if path.is_file() and now - path.stat().st_mtime >= older_than_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer finished (renamed it) meanwhile
            continue
    return removed


def write_atomic(final: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``final`` atomically."""
    with atomic_path(final) as tmp:
        writer(tmp)
    return Path(final)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(final, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(final: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def torch_save_atomic(final: str | os.PathLike[str], obj: Any) -> Path:
    return write_atomic(final, lambda p: torch.save(obj, p))


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object that does not depend on dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def bytes_hash(*chunks: bytes, length: int = 16) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()[:length]
