"""``run_bench.py cache``: what ``cache_dir`` holds, per dataset and kind, and what a grid needs.

Kinds of entries (see docs/architecture.md, "Caches"):
  images   decoded Karpathy images, ``images/<dataset>-<R>px-<key>.{u8,json}`` (older ``.pt``)
  text     caption embeddings, ``text/<dataset>-<split>-<key>.pt`` (older ``<key>.pt``)
  proxy    proxy runs for coresets, ``proxy/<dataset>-<key>.pt``
  experts  expert trajectories, ``experts/<dataset>-<key>/expert_NNN.safetensors``
  distill  distillation checkpoints, ``distill/<dataset>-<method>-<key>.pt``

An entry is *referenced* by a grid when running that grid would read it. Images, caption
embeddings, proxies and experts are matched exactly, by recomputing their keys from the
config (without decoding an image or loading a model: only annotations, captions, the text
encoder's files and the recipes are read). A distillation checkpoint's key depends on choices
made inside the method, so a checkpoint counts as referenced while the grid has an unfinished
cell of its dataset and method (a finished cell never reads its checkpoint again). Anything
else (older layouts, other grids' entries, temporary files of dead writers) is unreferenced and
``--prune`` removes it. Files this module does not recognise are listed and never removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bench.core.io import SHARED_TEMP_MAX_AGE_S, TEMP_GLOB, remove_stale_temp_files
from bench.data.datasets import DatasetConfig, dataset_key
from bench.data.embedded import SPLITS, embedded_captions, embedded_content_key
from bench.data.image_cache import entry_paths
from bench.data.karpathy import check_karpathy
from bench.data.text_encoder import caption_cache_path, model_identity
from bench.distill.experts import expert_dir, expert_key
from bench.grid.spec import GridConfig, plan_cells, resolve_cell
from bench.grid.store import ResultStore
from bench.protocol.proxy import proxy_key, proxy_path
from bench.registry import get_method

KINDS = ("images", "text", "proxy", "experts", "distill")


@dataclass(frozen=True)
class CacheEntry:
    kind: str  # one of KINDS, or "other" (not recognised: never pruned)
    dataset: str  # from the file name; "?" when it does not say
    paths: tuple[Path, ...]  # the files (or the expert directory) of the entry
    size: int
    referenced: bool


class _Identity(NamedTuple):
    """What the cache keys of a prepared dataset need (its name and dataset key), computed
    without preparing it; stands in for a :class:`PreparedDataset` in the key functions."""

    name: str
    key: str


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _dataset_refs(grid: GridConfig, cfg: DatasetConfig) -> tuple[_Identity, set[Path]]:
    """The dataset's identity and the image and caption-embedding files the grid reads."""
    cache = Path(grid.cache_dir)
    refs: set[Path] = set()
    captions: dict[str, tuple[str, ...]]
    if cfg.source == "karpathy":
        checked = check_karpathy(cfg.karpathy)  # type: ignore[arg-type]
        captions = {p.split: p.captions for p in checked.parsed}
        content = checked.key
        refs.update(entry_paths(cache, cfg.name, cfg.resolution, content))
    else:
        captions = {split: embedded_captions(cfg.embedded, split) for split in SPLITS}
        content = embedded_content_key(cfg.embedded)
    encoder = model_identity(cfg.text_encoder)
    for split, texts in captions.items():
        refs.add(caption_cache_path(cache, encoder, texts, f"{cfg.name}-{split}"))
    return _Identity(cfg.name, dataset_key(content, encoder)), refs


def referenced(grid: GridConfig) -> tuple[set[Path], set[str]]:
    """The cache paths ``grid`` reads (files, expert directories) and the ``<dataset>-<method>-``
    prefixes of the distillation checkpoints it may still resume from."""
    cache, store = Path(grid.cache_dir), ResultStore(grid.results_dir)
    classes = {spec.key: get_method(spec.name) for spec in grid.methods}
    paths: set[Path] = set()
    prefixes: set[str] = set()
    for cfg in grid.datasets:
        ident, refs = _dataset_refs(grid, cfg)
        paths |= refs
        data: Any = ident  # the key functions read only .name and .key
        if any(c.uses_experts for c in classes.values()):
            paths.add(expert_dir(cache, data, expert_key(data, grid.model, grid.experts, grid.evaluation.full_train)))
        if any(c.uses_proxy for c in classes.values()):
            base = grid.evaluation.full_train
            paths |= {proxy_path(cache, data, proxy_key(data, grid.model, grid.proxy, base, seed))
                      for seed in grid.method_seeds}
    for cell in plan_cells(grid):
        resolved = resolve_cell(grid, cell)
        if resolved.method_cls.uses_experts and not store.finished(cell, resolved.hash):
            prefixes.add(f"{cell.dataset}-{resolved.method_cls.name}-")
    return paths, prefixes


def _dataset_of(name: str, parts: int, known: list[str]) -> str:
    """The dataset a file name starts with: a known name followed by '-', else the part before
    the last ``parts`` '-'-separated fields."""
    for dataset in sorted(known, key=len, reverse=True):
        if name.startswith(f"{dataset}-"):
            return dataset
    pieces = name.rsplit("-", parts)
    return pieces[0] if len(pieces) > parts else "?"


def _scan(cache: Path, known: list[str]) -> Iterator[tuple[str, str, tuple[Path, ...]]]:
    """(kind, dataset, paths) of every entry under ``cache``; unrecognised files as "other"."""
    seen: set[Path] = set()
    images = cache / "images"
    for path in sorted(images.glob("*")) if images.is_dir() else []:
        if path.name.startswith(".") or path in seen:
            continue
        if path.suffix in (".u8", ".json"):
            pair = tuple(p for p in (path.with_suffix(".json"), path.with_suffix(".u8")) if p.exists())
            seen.update(pair)
            yield "images", _dataset_of(path.stem, 2, known), pair
        elif path.suffix == ".pt":
            seen.add(path)
            yield "images", _dataset_of(path.stem, 2, known), (path,)
    for kind, parts in (("text", 2), ("proxy", 1), ("distill", 2)):
        for path in sorted((cache / kind).glob("*.pt")) if (cache / kind).is_dir() else []:
            if not path.name.startswith("."):
                seen.add(path)
                dataset = _dataset_of(path.stem, parts, known) if "-" in path.stem else "?"
                yield kind, dataset, (path,)
    experts = cache / "experts"
    for directory in sorted(experts.iterdir()) if experts.is_dir() else []:
        if directory.is_dir():
            seen.update(directory.rglob("*"))
            yield "experts", _dataset_of(directory.name, 1, known), (directory,)
    for path in sorted(cache.rglob("*")) if cache.is_dir() else []:
        if path.is_file() and path not in seen and not path.match(TEMP_GLOB):
            yield "other", "?", (path,)


def inventory(grid: GridConfig) -> list[CacheEntry]:
    """Every entry of the grid's ``cache_dir``, whether the grid references it, and its size."""
    cache = Path(grid.cache_dir)
    paths, prefixes = referenced(grid)
    known = [d.name for d in grid.datasets]
    entries = []
    for kind, dataset, files in _scan(cache, known):
        used = kind == "other" or any(p in paths for p in files) or (
            kind == "distill" and any(files[0].name.startswith(prefix) for prefix in prefixes))
        entries.append(CacheEntry(kind, dataset, files, sum(_size(p) for p in files), used))
    return entries


def prune(grid: GridConfig, entries: list[CacheEntry]) -> int:
    """Delete the unreferenced entries (and temporary files of dead writers); bytes freed."""
    freed = 0
    for entry in entries:
        if entry.referenced:
            continue
        for path in entry.paths:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        freed += entry.size
    remove_stale_temp_files(grid.cache_dir, older_than_s=SHARED_TEMP_MAX_AGE_S)
    return freed


def format_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"  # pragma: no cover

