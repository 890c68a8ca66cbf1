"""The suite's portable set bundle: one safetensors file of tensors and a JSON card beside it.

A bundle is what ``run_bench.py export`` writes for every finished cell and what the
``from-file`` method reads back (``format: bench``)::

    <name>.safetensors   images, image_index, text_emb [, source_indices, soft_targets, learned_lrs]
    <name>.json          the card: where the set comes from and what it scored (free-form JSON)

safetensors, not a pickle: a set from someone else is then data, never code run at load. The
tensors are stored exactly as the set held them (dtype included), so a set read back is
evaluated on the same bits and gives the same numbers. What the tensors mean travels in the
safetensors header (``__metadata__``), so the tensors file alone is enough to evaluate a set:

* ``image_space``: ``pixels`` (uint8 images, as a coreset holds them: normalised per batch by
  the trainer) or ``normalised`` (float images already in the model-input space, as distilled
  images are: ``(pixel / 255 - mean) / std`` with ``image_mean`` / ``image_std``);
* ``soft_target_loss``: the loss the soft targets train with (``infonce`` or ``wbce``), when
  there are soft targets; ``learned_lrs`` is a float64 (2,) tensor: image side, text side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import UserError
from bench.core.io import write_atomic, write_json_atomic
from bench.data.pairs import PairSet, SoftTargets
from bench.data.types import IMAGE_MEAN, IMAGE_STD

#: The ``format`` entry of a bundle's safetensors header, and the version of its layout.
BUNDLE_FORMAT = "vl-distill-bench-set"
BUNDLE_VERSION = "1"
TENSORS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
LOSSES = ("infonce", "wbce")


class SetFileError(UserError, ValueError):
    """A set file that cannot be read as the format it is said to be in (the message names it)."""


@dataclass(frozen=True)
class LoadedSet:
    """A set read from a file: its pairs (images in the suite's model-input space or uint8
    pixels), the learned step sizes it carries, and its card (None: no card beside it)."""

    pairs: PairSet
    learned_lrs: dict[str, float] | None
    card: dict[str, Any] | None


def bundle_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(tensors file, card) of a bundle named by its card, its tensors file (any existing file
    is taken as that) or their common stem (``sets/x`` -> ``sets/x.safetensors``, ``sets/x.json``)."""
    path = Path(path)
    if path.suffix == CARD_SUFFIX:
        tensors = path.with_suffix(TENSORS_SUFFIX)
    elif path.suffix == TENSORS_SUFFIX or path.is_file():
        tensors = path
    else:
        tensors = path.with_name(path.name + TENSORS_SUFFIX)
    return tensors, tensors.with_suffix(CARD_SUFFIX)


def bundle_tensors(pairs: PairSet, learned_lrs: dict[str, float] | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header entries a bundle stores for ``pairs``."""
    tensors = {"images": pairs.images, "image_index": pairs.image_index, "text_emb": pairs.text_emb}
    meta = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION,
            "image_space": "pixels" if pairs.images.dtype == torch.uint8 else "normalised",
            "image_mean": json.dumps(list(IMAGE_MEAN)), "image_std": json.dumps(list(IMAGE_STD))}
    if pairs.source_indices is not None:
        tensors["source_indices"] = pairs.source_indices
    if pairs.soft_targets is not None:
        tensors["soft_targets"] = pairs.soft_targets.matrix
        meta["soft_target_loss"] = pairs.soft_targets.loss
    if learned_lrs is not None:
        tensors["learned_lrs"] = torch.tensor([learned_lrs["image"], learned_lrs["text"]], dtype=torch.float64)
    # safetensors wants contiguous tensors that share no memory (a real subset's images are a view)
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, meta


def write_bundle(path: str | os.PathLike[str], pairs: PairSet, learned_lrs: dict[str, float] | None,
                 card: dict[str, Any] | Callable[[Path], dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` and ``<path>.json`` atomically (tensors first, so a card on
    disk means its tensors are there); returns both paths. ``card`` may be a function of the
    written tensors file (a card that gives its digest)."""
    from safetensors.torch import save_file

    tensors_path, card_path = bundle_paths(path)
    tensors, meta = bundle_tensors(pairs, learned_lrs)
    write_atomic(tensors_path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    write_json_atomic(card_path, card(tensors_path) if callable(card) else card)
    return tensors_path, card_path


def read_bundle(path: str | os.PathLike[str]) -> LoadedSet:
    """The set of a bundle (named by its tensors file, its card or their stem); a
    :class:`SetFileError` naming the file when it is not one."""
    from safetensors import safe_open

    tensors_path, card_path = bundle_paths(path)
    if not tensors_path.is_file():
        raise SetFileError(f"{tensors_path}: no such file (a bundle is <name>.safetensors with <name>.json beside it)")
    try:
        with safe_open(str(tensors_path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types for a damaged file
        raise SetFileError(f"{tensors_path}: not a safetensors file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise SetFileError(f"{tensors_path}: not a set bundle of this suite (its header has format "
                           f"{meta.get('format')!r}, expected {BUNDLE_FORMAT!r})")
    if meta.get("format_version") != BUNDLE_VERSION:
        raise SetFileError(f"{tensors_path}: bundle format version {meta.get('format_version')!r}, this suite "
                           f"reads version {BUNDLE_VERSION}")
    missing = [k for k in ("images", "image_index", "text_emb") if k not in tensors]
    if missing:
        raise SetFileError(f"{tensors_path}: the bundle has no {missing[0]!r} tensor")
    card = None
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SetFileError(f"{card_path}: cannot read the set's card: {exc}") from None
    images = to_suite_space(tensors["images"], meta, tensors_path)
    soft = None
    if "soft_targets" in tensors:
        loss = meta.get("soft_target_loss")
        if loss not in LOSSES:
            raise SetFileError(f"{tensors_path}: soft targets with soft_target_loss {loss!r} (one of {list(LOSSES)})")
        soft = SoftTargets(tensors["soft_targets"], loss)
    lrs = None
    if "learned_lrs" in tensors:
        values = tensors["learned_lrs"].tolist()
        if len(values) != 2:
            raise SetFileError(f"{tensors_path}: learned_lrs must hold 2 values (image, text), got {len(values)}")
        lrs = {"image": float(values[0]), "text": float(values[1])}
    try:
        pairs = PairSet(images, tensors["image_index"], tensors["text_emb"], tensors.get("source_indices"), soft)
    except ValueError as exc:
        raise SetFileError(f"{tensors_path}: {exc}") from None
    return LoadedSet(pairs, lrs, card)


def to_suite_space(images: torch.Tensor, meta: dict[str, str], where: Path) -> torch.Tensor:
    """A bundle's images in the suite's space: uint8 pixels as they are, normalised floats
    re-normalised when the bundle says another mean/std than the suite's."""
    space = meta.get("image_space")
    if space == "pixels":
        if images.dtype != torch.uint8:
            raise SetFileError(f"{where}: image_space 'pixels' needs uint8 images, got {images.dtype}")
        return images
    if space != "normalised" or not images.is_floating_point():
        raise SetFileError(f"{where}: image_space {space!r} with {images.dtype} images (expected 'pixels' with "
                           "uint8 or 'normalised' with float images)")
    try:
        mean, std = tuple(json.loads(meta["image_mean"])), tuple(json.loads(meta["image_std"]))
    except (KeyError, ValueError) as exc:
        raise SetFileError(f"{where}: normalised images without a readable image_mean / image_std ({exc})") from None
    return renormalise(images, mean, std)


def renormalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Float images normalised with ``mean``/``std`` -> the suite's normalisation (the same
    pixels); unchanged (the same tensor) when the statistics are the suite's."""
    if tuple(mean) == tuple(IMAGE_MEAN) and tuple(std) == tuple(IMAGE_STD):
        return images
    if images.ndim != 4 or images.shape[1] != 3 or len(mean) != 3 or len(std) != 3:
        raise ValueError(f"images (n, 3, H, W) and 3 channel statistics needed, got {tuple(images.shape)}")

    def column(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64).view(1, 3, 1, 1)

    pixels = images.double() * column(std) + column(mean)
    return ((pixels - column(IMAGE_MEAN)) / column(IMAGE_STD)).to(images.dtype)
