"""Decoded images on disk, memory-mapped: a worker reads only the pages of the images it uses.

A cache entry is two files under ``<cache_dir>/images/``:

  <name>-<resolution>px-<key>.u8     every split's uint8 pixels (n, 3, R, R), concatenated
  <name>-<resolution>px-<key>.json   what is where: format, key, resolution, and per split its
                                     first row, row count and image names (optionally its
                                     captions too: the embedded generator's, see
                                     :mod:`bench.data.embedded_cache`)

The pixels are decoded straight into a memory map of the temporary file (so even COCO's 17 GB
train split never has to fit in memory), flushed, and renamed into place; the ``.json`` is
written last, so its presence means the ``.u8`` is complete. Readers map the ``.u8``
copy-on-write: the tensors behave like ordinary ones, pages are read from disk only when an
image is touched, several processes share the page cache, and the file is never modified.

An entry that does not match (another key, a truncated ``.u8``, unreadable JSON) is reported
with a warning naming the file and removed, and the caller decodes again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from bench.core.io import atomic_path, discard_corrupt, write_json_atomic

#: Fills the rows of one split: ``fill(split, out)`` with ``out`` a uint8 (n, 3, R, R) view.
Fill = Callable[[str, np.ndarray], None]
DATA_SUFFIX, META_SUFFIX = ".u8", ".json"
#: The description's optional entry of each split's captions (sources whose captions cost
#: time to produce store them here, beside the images they belong to).
CAPTIONS = "captions"


def entry_paths(cache_dir: str | os.PathLike[str], name: str, resolution: int, key: str) -> tuple[Path, Path]:
    """The (pixels, description) files of one cache entry."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "dataset"
    stem = Path(cache_dir) / "images" / f"{safe}-{resolution}px-{key}"
    return stem.with_name(stem.name + DATA_SUFFIX), stem.with_name(stem.name + META_SUFFIX)


def _layout(splits: Mapping[str, Sequence[str]]) -> dict[str, dict[str, object]]:
    layout, start = {}, 0
    for split, names in splits.items():
        layout[split] = {"start": start, "count": len(names), "image_names": list(names)}
        start += len(names)
    return layout


def _map(data: Path, rows: int, resolution: int, mode: str) -> np.memmap:
    return np.memmap(data, dtype=np.uint8, mode=mode, shape=(rows, 3, resolution, resolution))


def _views(array: np.ndarray, layout: Mapping[str, Mapping[str, object]]) -> dict[str, torch.Tensor]:
    out = {}
    for split, entry in layout.items():
        start, count = int(entry["start"]), int(entry["count"])  # type: ignore[call-overload]
        out[split] = torch.from_numpy(array[start:start + count])
    return out


def read_image_entry(
    cache_dir: str | os.PathLike[str], name: str, resolution: int, key: str, fmt: str,
    splits: Mapping[str, Sequence[str]],
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, ...]] | None] | None:
    """The cached images of ``splits`` (split -> image names, in order), memory-mapped, and the
    captions the entry stores (None when it stores none), or None when there is no usable entry
    (an unusable one is reported and removed)."""
    data, meta = entry_paths(cache_dir, name, resolution, key)
    if not meta.is_file():
        return None
    layout = _layout(splits)
    rows = sum(len(v) for v in splits.values())
    try:
        described = json.loads(meta.read_text(encoding="utf-8"))
        captions = described.pop(CAPTIONS, None) if isinstance(described, dict) else None
        expected = {"format": fmt, "key": key, "resolution": resolution, "splits": layout}
        if described != expected:
            raise ValueError("it describes other images (format, key, resolution or image names differ)")
        if captions is not None and not _are_captions(captions, layout):
            raise ValueError(f"its {CAPTIONS!r} are not a list of strings per split")
        size = data.stat().st_size
        if size != rows * 3 * resolution * resolution:
            raise ValueError(f"{data.name} holds {size} bytes, expected {rows * 3 * resolution * resolution}")
        array = _map(data, rows, resolution, "c")  # copy-on-write: the file is never modified
    except (OSError, ValueError) as exc:
        discard_corrupt(meta, "image cache", f"{type(exc).__name__}: {exc}")
        data.unlink(missing_ok=True)
        return None
    stored = None if captions is None else {split: tuple(texts) for split, texts in captions.items()}
    return _views(array, layout), stored


def read_image_cache(
    cache_dir: str | os.PathLike[str], name: str, resolution: int, key: str, fmt: str,
    splits: Mapping[str, Sequence[str]],
) -> dict[str, torch.Tensor] | None:
    """The images of :func:`read_image_entry` (None when there is no usable entry)."""
    entry = read_image_entry(cache_dir, name, resolution, key, fmt, splits)
    return None if entry is None else entry[0]


def store_captions(cache_dir: str | os.PathLike[str], name: str, resolution: int, key: str,
                   captions: Mapping[str, Sequence[str]]) -> None:
    """Add ``captions`` (split -> captions) to an existing entry's description, atomically, so
    later readers take them from there; nothing happens when the entry is gone. The caller
    vouches that they belong to the key's images (the key covers what made both)."""
    _, meta = entry_paths(cache_dir, name, resolution, key)
    try:
        described = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # removed or rewritten meanwhile: the next reader repairs or redraws
    if isinstance(described, dict) and described.get("key") == key:
        described[CAPTIONS] = {split: list(texts) for split, texts in captions.items()}
        write_json_atomic(meta, described)


def stored_captions(cache_dir: str | os.PathLike[str], name: str, resolution: int,
                    key: str) -> dict[str, tuple[str, ...]] | None:
    """The captions an entry's description stores, read without checking or touching its
    images (for listings); None when there is no entry, it stores none, or it cannot be read."""
    _, meta = entry_paths(cache_dir, name, resolution, key)
    try:
        described = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    captions = described.get(CAPTIONS) if isinstance(described, dict) else None
    if not isinstance(described, dict) or described.get("key") != key \
            or not _are_captions(captions, described.get("splits") or {}):
        return None
    return {split: tuple(texts) for split, texts in captions.items()}


def _are_captions(captions: object, layout: Mapping[str, object]) -> bool:
    return (isinstance(captions, dict) and set(captions) == set(layout)
            and all(isinstance(t, list) and all(isinstance(c, str) for c in t) for t in captions.values()))


def write_image_cache(
    cache_dir: str | os.PathLike[str], name: str, resolution: int, key: str, fmt: str,
    splits: Mapping[str, Sequence[str]], fill: Fill, captions: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, torch.Tensor]:
    """Decode every split through ``fill`` into a new cache entry and return it mapped; the
    description stores ``captions`` (split -> captions) when given.
    Nothing is left under the final names (nor a temporary file) if ``fill`` raises."""
    data, meta = entry_paths(cache_dir, name, resolution, key)
    layout = _layout(splits)
    rows = sum(len(v) for v in splits.values())
    meta.unlink(missing_ok=True)  # an old description must never vouch for new pixels
    with atomic_path(data) as tmp:
        array = _map(tmp, rows, resolution, "w+")
        for split, view in _views(array, layout).items():
            fill(split, view.numpy())
        array.flush()
        del array
    description: dict[str, object] = {"format": fmt, "key": key, "resolution": resolution, "splits": layout}
    if captions is not None:
        description[CAPTIONS] = {split: list(texts) for split, texts in captions.items()}
    write_json_atomic(meta, description)
    return _views(_map(data, rows, resolution, "c"), layout)
