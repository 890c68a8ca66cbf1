"""``run_bench.py cache``: what ``cache_dir`` holds, per dataset and kind, and what a grid needs.

Kinds of entries (see docs/architecture.md, "Caches"):
  images   decoded Karpathy images and rendered embedded ones, ``images/<dataset>-<R>px-<key>.{u8,json}`` (older ``.pt``)
  text     caption embeddings, ``text/<dataset>-<split>-<key>.pt`` (older ``<key>.pt``)
  proxy    proxy runs for coresets, ``proxy/<dataset>-<key>.pt``
  experts  expert trajectories, ``experts/<dataset>-<key>/expert_NNN.safetensors`` (an entry per file)
  distill  distillation checkpoints, ``distill/<dataset>-<method>-<key>.pt``
  sets     sets kept for cells of the same inputs, ``sets/<dataset>-<method>-<key>.{pt,json}`` (bench/grid/set_index.py)

An entry is *referenced* by a grid when running that grid would read it. Images, caption
embeddings, proxies and experts are matched exactly, by recomputing their keys from the
config (without decoding an image or loading a model: only annotations, captions, the text
encoder's files and the recipes are read); of an expert directory the grid reads, the files
beyond its ``n_experts`` are not read. A distillation checkpoint's key depends on choices
made inside the method, so a checkpoint counts as referenced while the grid has an unfinished
cell of its dataset and method (a finished cell never reads its checkpoint again). A kept set
is referenced when a cell the grid plans has its key (with the entries' own parameters: the
sets of tuning trials the config's recipes did not pick are not, and go with ``--prune``). Anything
else (older layouts, other grids' entries, temporary files of dead writers) is unreferenced and
``--prune`` removes it. A file is recognised by its name (each kind's pattern above, with a
16-hex-digit key); any other file is listed as "other" and never removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bench.core.io import SHARED_TEMP_MAX_AGE_S, TEMP_GLOB, UnusableDirectoryError, remove_stale_temp_files
from bench.data.datasets import DatasetConfig, dataset_key
from bench.data.embedded import embedded_content_key
from bench.data.embedded_cache import cached_captions
from bench.data.image_cache import entry_paths
from bench.data.karpathy import check_karpathy
from bench.data.text_encoder import caption_cache_path, model_identity
from bench.distill.experts import expert_dir, expert_key
from bench.core.env import pick_device
from bench.grid import set_index
from bench.grid.spec import GridConfig, plan_cells, resolve_cell
from bench.grid.store import ResultStore
from bench.protocol.proxy import proxy_key, proxy_path
from bench.registry import all_methods, get_method

KINDS = ("images", "text", "proxy", "experts", "distill", "sets")


@dataclass(frozen=True)
class CacheEntry:
    kind: str  # one of KINDS, or "other" (not recognised: never pruned)
    dataset: str  # from the file name; "?" when it does not say
    paths: tuple[Path, ...]  # the files of the entry
    size: int
    referenced: bool


class _Identity(NamedTuple):
    """What the cache keys of a prepared dataset need (its name and dataset key), computed
    without preparing it; stands in for a :class:`PreparedDataset` in the key functions."""

    name: str
    key: str


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def dataset_refs(grid: GridConfig, cfg: DatasetConfig) -> tuple[_Identity, set[Path]]:
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
        captions = cached_captions(cfg.embedded, cache)
        content = embedded_content_key(cfg.embedded)
        refs.update(entry_paths(cache, cfg.name, cfg.resolution, content))  # the rendered pixels
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
        ident, refs = dataset_refs(grid, cfg)
        paths |= refs
        data: Any = ident  # the key functions read only .name and .key
        if any(c.uses_experts for c in classes.values()):
            paths.add(expert_dir(cache, data, expert_key(data, grid.model, grid.experts, grid.evaluation.full_train)))
        if any(c.uses_proxy for c in classes.values()):
            base = grid.evaluation.full_train
            paths |= {proxy_path(cache, data, proxy_key(data, grid.model, grid.proxy, base, seed))
                      for seed in grid.method_seeds}
    device = pick_device(grid.device)
    for cell in plan_cells(grid):
        resolved = resolve_cell(grid, cell)
        if resolved.method_cls.kind != "reference":  # the set a cell keeps for cells of its inputs
            paths.update(set_index.entry_paths(cache, cell.dataset, resolved.method_cls.name,
                                               set_index.set_key(resolved.set_hash, device)))
        if resolved.method_cls.uses_experts and not store.finished(cell, resolved.hash):
            prefixes.add(f"{cell.dataset}-{resolved.method_cls.name}-")
    return paths, prefixes


_KEY = r"[0-9a-f]{16}"  # bench.core.io.stable_hash
#: The names each kind's files are given (``rest`` holds the dataset, for distillation
#: checkpoints ``<dataset>-<method>``); a file of another name is "other" and never pruned.
_NAMES = {
    "images": re.compile(rf"(?P<rest>.+)-\d+px-{_KEY}\.(u8|json|pt)"),
    "text": re.compile(rf"(?:(?P<rest>.+)-(?:train|val|test)-)?{_KEY}\.pt"),
    "proxy": re.compile(rf"(?P<rest>.+)-{_KEY}\.pt"),
    "distill": re.compile(rf"(?P<rest>.+)-{_KEY}\.pt"),
    "sets": re.compile(rf"(?P<rest>.+)-{_KEY}\.(pt|json)"),
    "experts": re.compile(rf"(?P<rest>.+)-{_KEY}"),  # a directory of expert files
}
_EXPERT_FILE = re.compile(r"expert_(?P<index>\d{3,})\.safetensors")


def _distill_dataset(rest: str, known: list[str]) -> str:
    """The dataset of a checkpoint named ``<dataset>-<method>-<key>.pt``: ``rest`` less the
    longest registered method name it ends with (dataset and method names may both hold '-'),
    else a grid dataset it starts with, else "?"."""
    names = sorted(all_methods(), key=len, reverse=True)
    method = next((m for m in names if rest.endswith(f"-{m}") and len(rest) > len(m) + 1), None)
    if method is not None:
        return rest[:-len(method) - 1]
    return next((d for d in sorted(known, key=len, reverse=True) if rest.startswith(f"{d}-")), "?")


def _named(kind: str, path: Path, known: list[str]) -> str | None:
    """The dataset of ``path`` when its name is one ``kind`` gives its files, else None."""
    match = _NAMES[kind].fullmatch(path.name)
    if match is None:
        return None
    rest = match.group("rest")
    if kind in ("distill", "sets"):
        return _distill_dataset(rest, known)
    return rest or "?"


def _scan(cache: Path, known: list[str]) -> Iterator[tuple[str, str, tuple[Path, ...]]]:
    """(kind, dataset, paths) of every entry under ``cache`` (experts: one entry per expert
    file); files whose names no kind gives are "other"."""
    seen: set[Path] = set()
    images = cache / "images"
    for path in sorted(images.glob("*")) if images.is_dir() else []:
        dataset = _named("images", path, known) if path.is_file() else None
        if dataset is None or path in seen:
            continue
        if path.suffix in (".u8", ".json"):
            files = tuple(p for p in (path.with_suffix(".json"), path.with_suffix(".u8")) if p.exists())
        else:
            files = (path,)
        seen.update(files)
        yield "images", dataset, files
    sets = cache / "sets"
    for path in sorted(sets.glob("*")) if sets.is_dir() else []:
        dataset = _named("sets", path, known) if path.is_file() else None
        if dataset is None or path in seen:
            continue
        files = tuple(p for p in (path.with_suffix(".json"), path.with_suffix(".pt")) if p.exists())
        seen.update(files)
        yield "sets", dataset, files
    for kind in ("text", "proxy", "distill"):
        for path in sorted((cache / kind).glob("*.pt")) if (cache / kind).is_dir() else []:
            dataset = _named(kind, path, known) if path.is_file() else None
            if dataset is not None:
                seen.add(path)
                yield kind, dataset, (path,)
    experts = cache / "experts"
    for directory in sorted(experts.iterdir()) if experts.is_dir() else []:
        dataset = _named("experts", directory, known) if directory.is_dir() else None
        for path in sorted(directory.iterdir()) if dataset is not None else []:
            if path.is_file() and _EXPERT_FILE.fullmatch(path.name):
                seen.add(path)
                yield "experts", dataset, (path,)
    for path in sorted(cache.rglob("*")) if cache.is_dir() else []:
        if path.is_file() and path not in seen and not path.match(TEMP_GLOB):
            yield "other", "?", (path,)


def _expert_index(path: Path) -> int:
    match = _EXPERT_FILE.fullmatch(path.name)
    return int(match.group("index")) if match else -1


def inventory(grid: GridConfig) -> list[CacheEntry]:
    """Every entry of the grid's ``cache_dir``, whether the grid references it, and its size.
    A ``cache_dir`` that is missing or a file is an :class:`UnusableDirectoryError` (an empty
    listing would read as "nothing cached" when the path is mistyped)."""
    cache = Path(grid.cache_dir)
    if not cache.is_dir():
        what = "is a file, not a directory" if cache.exists() else "does not exist (nothing was cached there)"
        raise UnusableDirectoryError(f"cache_dir {cache} {what}; check cache_dir in the config or --set cache_dir=...")
    paths, prefixes = referenced(grid)
    known = [d.name for d in grid.datasets]
    entries = []
    for kind, dataset, files in _scan(cache, known):
        if kind == "experts":  # read: in a directory the grid reads, and one of its n_experts
            used = files[0].parent in paths and _expert_index(files[0]) < grid.experts.n_experts
        else:
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
            path.unlink(missing_ok=True)
        if entry.kind == "experts":  # the directory goes with its last expert
            try:
                entry.paths[0].parent.rmdir()
            except OSError:
                pass
        freed += entry.size
    remove_stale_temp_files(grid.cache_dir, older_than_s=SHARED_TEMP_MAX_AGE_S)
    return freed


def format_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"  # pragma: no cover

