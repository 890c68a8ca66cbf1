"""Flickr30K / COCO in the BLIP/ALBEF "Karpathy" JSON format, strictly validated and cached.

Loading happens in three phases so that a broken dataset fails fast and says exactly where:

1. structure: each annotation file is parsed and every entry checked (types, empty captions,
   unsafe paths, duplicates), see :func:`parse_split`;
2. cross-file and file system: no image in two splits, every image file exists (``stat`` only);
3. pixels: images are decoded once (:mod:`bench.data.images`) into a memory-mapped cache
   entry per dataset and resolution (:mod:`bench.data.image_cache`), unless it exists.

Nothing is decoded before phases 1 and 2 pass for *all* entries of *all* files. Each phase
collects up to :data:`MAX_PROBLEMS` problems into one :class:`AnnotationError` (so fixing a
file is not a one-error-per-run loop) and stops before the next phase; decoding stops at the
first image that fails, since a corrupt file usually means a bad download to redo anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn

import numpy as np
import torch

from bench.core.config import PATH_FIELD, check_path_name
from bench.core.errors import UserError
from bench.core.io import stable_hash
from bench.data.image_cache import read_image_cache, write_image_cache
from bench.data.images import ImageDecodeError, decode_images
from bench.data.types import Dataset, Split

#: Part of every cache key: bump when the decode geometry or the cache layout changes, so
#: old cache files are never read back as if they were current.
CACHE_FORMAT = "karpathy-images-v2 (shorter side bicubic, center crop, RGB uint8, 16-bit grey scaled; memory-mapped)"
#: At most this many problems are listed in one error; the rest are counted.
MAX_PROBLEMS = 10
SPLITS = ("train", "val", "test")
_ENTRY_NOTE = "(entry numbers are 0-based positions in the JSON list)"


class AnnotationError(UserError, ValueError):
    """A dataset that cannot be loaded as given. Every problem line names the annotation file
    and, where relevant, the 0-based entry index and the image path, e.g.
    ``flickr30k_train.json, entry 17, image 'a.jpg': caption is empty``."""

    def __init__(self, problems: Sequence[str], omitted: int = 0) -> None:
        self.problems = tuple(problems)
        note = any(", entry " in p for p in self.problems)
        if len(self.problems) == 1 and not omitted:  # one line, as the command line shows it
            msg = self.problems[0] + (f" {_ENTRY_NOTE}" if note else "")
        else:
            more = f" ({omitted} more not shown)" if omitted else ""
            msg = f"{len(self.problems) + omitted} dataset problems{more}:\n" + "\n".join(f"  {p}" for p in self.problems)
            msg += f"\n{_ENTRY_NOTE}" if note else ""
        super().__init__(msg)


class _Problems:
    """Collects problem lines up to a cap and raises them together."""

    def __init__(self, cap: int = MAX_PROBLEMS) -> None:
        self.items: list[str] = []
        self.omitted = 0
        self.cap = cap

    def add(self, msg: str) -> None:
        if len(self.items) < self.cap:
            self.items.append(msg)
        else:
            self.omitted += 1

    def raise_if_any(self) -> None:
        if self.items:
            raise AnnotationError(self.items, self.omitted)


@dataclass(frozen=True)
class KarpathySpec:
    """Where a dataset lives. ``resolution`` is the side of the square decoded images."""

    name: str
    train_json: str | os.PathLike[str] = field(metadata=PATH_FIELD)
    val_json: str | os.PathLike[str] = field(metadata=PATH_FIELD)
    test_json: str | os.PathLike[str] = field(metadata=PATH_FIELD)
    image_root: str | os.PathLike[str] = field(metadata=PATH_FIELD)
    resolution: int = 224

    def __post_init__(self) -> None:
        check_path_name(self.name, "name")  # cache and result file names start with it
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {self.resolution!r}")

    def annotation(self, split: str) -> Path:
        return Path({"train": self.train_json, "val": self.val_json, "test": self.test_json}[split])


@dataclass(frozen=True)
class ParsedSplit:
    """One validated annotation file. Images are unique, in order of first appearance;
    ``first_entry[k]`` is the entry where image ``k`` first appears (for messages)."""

    split: str
    file: Path
    label: str
    image_paths: tuple[str, ...]
    captions: tuple[str, ...]
    caption_image: tuple[int, ...]
    first_entry: tuple[int, ...]
    sha256: str


# ---------------------------------------------------------------------------------------------
# Phase 1: structure


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _relative_image_path(image: str) -> str | None:
    """The normalised relative path, or None when it is absolute or climbs out with '..'."""
    if image.startswith(("/", "\\")) or PureWindowsPath(image).drive or PurePosixPath(image).is_absolute():
        return None
    parts = re.split(r"[/\\]", image)
    if ".." in parts:
        return None
    return str(PurePosixPath(image))


def _read_json(path: Path, problems: _Problems) -> tuple[Any, str] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        problems.add(f"{path}: annotation file not found")
        return None
    except OSError as exc:
        problems.add(f"{path}: cannot read annotation file: {exc}")
        return None
    try:
        return json.loads(raw), hashlib.sha256(raw).hexdigest()
    except RecursionError:
        problems.add(f"{path}: invalid JSON: nested too deeply to read")
    except json.JSONDecodeError as exc:
        problems.add(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
    except UnicodeDecodeError as exc:
        problems.add(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    return None


def _check_captions(entry: dict[str, Any], split: str, where: str, problems: _Problems) -> list[str] | None:
    caption = entry["caption"]
    if split == "train":
        if not isinstance(caption, str):
            hint = " (a list looks like a val/test file)" if isinstance(caption, list) else ""
            problems.add(f"{where}: 'caption' must be a string in a train file, got {_json_type(caption)}{hint}")
            return None
        if not caption.strip():
            problems.add(f"{where}: caption is empty")
            return None
        return [caption.strip()]
    if not isinstance(caption, list):
        hint = " (a string looks like a train file)" if isinstance(caption, str) else ""
        problems.add(f"{where}: 'caption' must be a list of strings in a {split} file, got {_json_type(caption)}{hint}")
        return None
    if not caption:
        problems.add(f"{where}: caption list is empty")
        return None
    out: list[str] = []
    for j, text in enumerate(caption):
        if not isinstance(text, str):
            problems.add(f"{where}: caption {j} of the list (0-based) must be a string, got {_json_type(text)}")
            return None
        if not text.strip():
            problems.add(f"{where}: caption {j} of the list (0-based) is empty")
            return None
        out.append(text.strip())
    return out


def _parse(path: Path, split: str, label: str, problems: _Problems) -> ParsedSplit | None:
    loaded = _read_json(path, problems)
    if loaded is None:
        return None
    data, digest = loaded
    if not isinstance(data, list):
        problems.add(f"{path}: top level must be a JSON list of entries, got {_json_type(data)}")
        return None
    if not data:
        problems.add(f"{path}: the list of entries is empty")
        return None
    n_before = len(problems.items) + problems.omitted
    index: dict[str, int] = {}
    images: list[str] = []
    first_entry: list[int] = []
    captions: list[str] = []
    caption_image: list[int] = []
    for i, entry in enumerate(data):
        where = f"{label}, entry {i}"
        if not isinstance(entry, dict):
            problems.add(f"{where}: expected an object, got {_json_type(entry)}")
            continue
        if "image" not in entry:
            problems.add(f"{where}: missing key 'image'")
            continue
        image = entry["image"]
        if not isinstance(image, str) or not image.strip():
            problems.add(f"{where}: 'image' must be a non-empty string, got {json.dumps(image)[:60]}")
            continue
        where = f"{where}, image {image!r}"
        if any(ord(c) < 32 for c in image):
            problems.add(f"{where}: image path contains a control character (e.g. a NUL byte)")
            continue
        rel = _relative_image_path(image)
        if rel is None or rel == ".":
            problems.add(f"{where}: image path must be relative to the image root (no absolute path, no '..')")
            continue
        if "caption" not in entry:
            problems.add(f"{where}: missing key 'caption'")
            continue
        image_id = entry.get("image_id")
        if "image_id" in entry and (isinstance(image_id, bool) or not isinstance(image_id, (str, int))):
            problems.add(f"{where}: 'image_id' must be a string or an int, got {_json_type(image_id)}")
            continue
        texts = _check_captions(entry, split, where, problems)
        if texts is None:
            continue
        k = index.get(rel)
        if k is None:
            k = index[rel] = len(images)
            images.append(rel)
            first_entry.append(i)
        elif split != "train":
            problems.add(f"{where}: image listed twice in a {split} file (first at entry {first_entry[k]})")
            continue
        captions.extend(texts)
        caption_image.extend([k] * len(texts))
    if len(problems.items) + problems.omitted > n_before:
        return None
    return ParsedSplit(split, path, label, tuple(images), tuple(captions), tuple(caption_image), tuple(first_entry), digest)


def parse_split(path: str | os.PathLike[str], split: str, label: str | None = None) -> ParsedSplit:
    """Read and validate one annotation file; no image file is touched.

    ``split`` is "train" (one entry per caption; entries with the same image are grouped,
    in order of first appearance) or "val"/"test" (one entry per image, a list of captions).
    Captions are stripped of surrounding whitespace and otherwise kept as written.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    problems = _Problems()
    parsed = _parse(path, split, label or path.name, problems)
    problems.raise_if_any()
    assert parsed is not None
    return parsed


# ---------------------------------------------------------------------------------------------
# Phase 2: across files, and the file system


def _labels(spec: KarpathySpec) -> dict[str, str]:
    """File names in messages: the bare name, or the full path when two names coincide."""
    names = {s: spec.annotation(s).name for s in SPLITS}
    clash = len(set(names.values())) < len(names)
    return {s: str(spec.annotation(s)) if clash else names[s] for s in SPLITS}


def _check_disjoint(parsed: Sequence[ParsedSplit], problems: _Problems) -> None:
    seen: dict[str, tuple[ParsedSplit, int]] = {}
    for p in parsed:
        for rel, entry in zip(p.image_paths, p.first_entry):
            if rel in seen:
                other, other_entry = seen[rel]
                problems.add(
                    f"{p.label}, entry {entry}, image {rel!r}: image also appears in another split "
                    f"({other.label}, entry {other_entry}); splits must not share images"
                )
            else:
                seen[rel] = (p, entry)


def _check_same_files(parsed: Sequence[ParsedSplit], files: dict[str, list[tuple[int, int]]],
                      problems: _Problems) -> None:
    """No image file serves two splits under different names: a symbolic or hard link (or a
    '.'-detour) of a train image in the test split is the same file, which comparing paths
    misses. ``files``: per split, each image's (st_dev, st_ino), in the order of its images."""
    seen: dict[tuple[int, int], tuple[ParsedSplit, int, str]] = {}
    for p in parsed:
        for rel, entry, identity in zip(p.image_paths, p.first_entry, files[p.split]):
            other = seen.setdefault(identity, (p, entry, rel))
            if other[0] is not p:  # two names in one split are allowed; one path twice was reported
                problems.add(
                    f"{p.label}, entry {entry}, image {rel!r}: the same file as image {other[2]!r} of another "
                    f"split ({other[0].label}, entry {other[1]}; a link or another name of it); splits must not "
                    "share images")


def _stat_images(p: ParsedSplit, root: Path, problems: _Problems,
                 identities: list[tuple[int, int]] | None = None) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) per image, from ``stat`` only (see :func:`cache_key`);
    each image's (device, inode) is appended to ``identities`` when given."""
    out: list[tuple[str, int, int]] = []
    for rel, entry in zip(p.image_paths, p.first_entry):
        where = f"{p.label}, entry {entry}, image {rel!r}"
        try:
            st = (root / rel).stat()
        except FileNotFoundError:
            problems.add(f"{where}: image file not found under the image root: {root / rel}")
            continue
        except OSError as exc:
            problems.add(f"{where}: cannot stat image file {root / rel}: {exc}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.add(f"{where}: not a regular file: {root / rel}")
            continue
        out.append((rel, st.st_size, st.st_mtime_ns))
        if identities is not None:
            identities.append((st.st_dev, st.st_ino))
    return out


# ---------------------------------------------------------------------------------------------
# Phase 3: pixels, through the cache


def cache_key(parsed: Sequence[ParsedSplit], stats: dict[str, list[tuple[str, int, int]]], resolution: int) -> str:
    """Content key of a decoded dataset: sha256 of each annotation file's bytes, the
    resolution, :data:`CACHE_FORMAT`, and for every image its relative path, size and
    ``mtime_ns``.

    Images are identified by ``stat`` rather than by hashing their bytes: reading and hashing
    the ~20 GB of COCO on every start would cost minutes, while any normal rewrite of a file
    changes its size or mtime. The trade-off: a tool that rewrites pixels in place while
    preserving both size and mtime would go unnoticed (delete the cache file then). The image
    root itself is not part of the key, so moving a dataset (keeping mtimes) still hits.
    """
    return stable_hash(
        {
            "format": CACHE_FORMAT,
            "resolution": resolution,
            "splits": {p.split: {"annotations_sha256": p.sha256, "images": stats[p.split]} for p in parsed},
        }
    )


def _decode_split(p: ParsedSplit, root: Path, resolution: int, workers: int | None, progress: bool, name: str,
                  out: np.ndarray) -> None:
    def on_error(i: int, path: Path, err: ImageDecodeError) -> NoReturn:
        raise AnnotationError(
            [f"{p.label}, entry {p.first_entry[i]}, image {p.image_paths[i]!r}: cannot decode image file {path}: {err.reason}"]
        ) from err

    paths = [root / rel for rel in p.image_paths]
    decode_images(paths, resolution, workers=workers, on_error=on_error, progress=progress,
                  description=f"{name} {p.split}", out=out)


@dataclass(frozen=True)
class CheckedKarpathy:
    """A dataset whose annotations and image files passed phases 1 and 2: everything but the
    pixels, and the key of its image cache entry (:func:`cache_key`)."""

    parsed: tuple[ParsedSplit, ...]
    key: str

    def split(self, name: str) -> ParsedSplit:
        return next(p for p in self.parsed if p.split == name)


def check_karpathy(spec: KarpathySpec) -> CheckedKarpathy:
    """Phases 1 and 2 (structure, files): raises :class:`AnnotationError`, decodes nothing."""
    root = Path(spec.image_root)
    labels = _labels(spec)

    problems = _Problems()
    maybe = [_parse(spec.annotation(s), s, labels[s], problems) for s in SPLITS]
    problems.raise_if_any()
    parsed = [p for p in maybe if p is not None]

    if not root.is_dir():
        raise AnnotationError([f"image root is not a directory: {root} (dataset {spec.name!r})"])
    _check_disjoint(parsed, problems)
    files: dict[str, list[tuple[int, int]]] = {p.split: [] for p in parsed}
    stats = {p.split: _stat_images(p, root, problems, files[p.split]) for p in parsed}
    problems.raise_if_any()
    _check_same_files(parsed, files, problems)
    problems.raise_if_any()
    return CheckedKarpathy(tuple(parsed), cache_key(parsed, stats, spec.resolution))


def load_karpathy(
    spec: KarpathySpec, cache_dir: str | os.PathLike[str], progress: bool = False, workers: int | None = None
) -> Dataset:
    """Validate, decode (or map from the cache) and return the dataset.

    Raises :class:`AnnotationError` for any problem with the annotations or image files.
    The cache entry is ``<cache_dir>/images/<name>-<resolution>px-<key>.{u8,json}`` (see
    :mod:`bench.data.image_cache` and :func:`cache_key`); it is completed only after every
    image decoded, so a failure leaves neither a partial entry nor a temporary file.
    ``Dataset.content_key`` is the key. The split images are memory-mapped from it.
    """
    checked = check_karpathy(spec)
    names = {p.split: p.image_paths for p in checked.parsed}
    args = (cache_dir, spec.name, spec.resolution, checked.key, CACHE_FORMAT, names)
    images = read_image_cache(*args)
    if images is None:
        root = Path(spec.image_root)
        images = write_image_cache(*args, fill=lambda split, out: _decode_split(
            checked.split(split), root, spec.resolution, workers, progress, spec.name, out))
    splits = {
        p.split: Split(
            images=images[p.split],
            captions=p.captions,
            caption_image=torch.tensor(p.caption_image, dtype=torch.int64),
            image_names=p.image_paths,
        )
        for p in checked.parsed
    }
    return Dataset(name=spec.name, train=splits["train"], val=splits["val"], test=splits["test"], content_key=checked.key)
