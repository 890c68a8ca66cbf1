"""A tiny offline Flickr30K stand-in: Karpathy-format JSON, JPEG files and a local text model.

``python -m bench.data.toy OUT`` (default ``data/toy``) writes, in a few seconds and without a
download, everything ``configs/flickr30k_smoke.yaml`` reads, laid out as the Flickr30K files of
``configs/flickr30k.yaml`` are::

    OUT/annotations/toy_train.json    one entry per caption (as flickr30k_train.json)
    OUT/annotations/toy_val.json      one entry per image, a list of captions
    OUT/annotations/toy_test.json     one entry per image, a list of captions
    OUT/toy-images/<image id>.jpg     the pictures (image_root is OUT)
    OUT/bert-tiny/                    a random-weight BERT directory (bench/data/tiny_bert.py),
                                      the stand-in for models/bert-base-uncased
    OUT/TOY.json                      what wrote the directory (sizes, seed, version)

**The Karpathy schema** (BLIP/ALBEF's annotation files, read by :mod:`bench.data.karpathy`).
A train file is a JSON list with one object per *caption*; the entries of one image share its
``image`` (5 entries per image in Flickr30K)::

    [{"image": "toy-images/1000.jpg", "caption": "two shapes on a white background", "image_id": "1000"},
     {"image": "toy-images/1000.jpg", "caption": "a large red circle and a small blue star", "image_id": "1000"},
     ...]

A val or test file has one object per *image*, its captions in a list::

    [{"image": "toy-images/1040.jpg", "caption": ["a green square on the left", "..."]}, ...]

``image`` is a path relative to ``image_root`` (no absolute path, no ``..``); ``caption`` is a
non-empty string (train) or a non-empty list of non-empty strings (val, test); ``image_id``
(a string or an integer) is optional and not read. No image may appear in two splits.

The pictures are scenes of the embedded generator (:mod:`bench.data.embedded`, its captions
true of them) rendered at ``image_size`` pixels and saved as JPEG; every third image is
widened and every third one heightened by repeating its edge pixels, so the loader's resize
of the shorter side and centre crop are exercised as on photographs. The same arguments give
the same bytes (every random choice is drawn from ``seed``).

The directory is written next to ``OUT`` and renamed into place when complete, so an
interrupted run leaves nothing under ``OUT``; rerunning replaces a toy set written earlier, and
``OUT`` is never written over when it holds anything else.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.core.errors import UserError
from bench.data.embedded import EmbeddedSpec, render_split
from bench.data.tiny_bert import caption_words, save_tiny_bert

#: Bump when the bytes written for some spec change.
TOY_VERSION = "toy-v1"
DEFAULT_OUT = "data/toy"
MARKER = "TOY.json"
IMAGE_DIR = "toy-images"
TEXT_MODEL_DIR = "bert-tiny"
SPLITS = ("train", "val", "test")
#: Pixels of edge added on each side of a widened or heightened picture.
PAD = 8
JPEG_QUALITY = 90


class ToyOutputError(UserError, FileExistsError):
    """``OUT`` holds something that is not a toy set written by this module."""


@dataclass(frozen=True)
class ToySpec:
    """Sizes and seed of the toy set (images per split; captions per image as Flickr30K's 5)."""

    n_train_images: int = 40
    n_val_images: int = 10
    n_test_images: int = 10
    captions_per_image: int = 5
    image_size: int = 64
    seed: int = 0

    def embedded(self) -> EmbeddedSpec:
        """The embedded spec whose scenes and captions the toy set shows (validates the sizes)."""
        return EmbeddedSpec(n_train_images=self.n_train_images, n_val_images=self.n_val_images,
                            n_test_images=self.n_test_images, captions_per_image=self.captions_per_image,
                            resolution=self.image_size, seed=self.seed)


def annotation_name(split: str) -> str:
    return f"toy_{split}.json"


def _jpeg(pixels: np.ndarray, index: int) -> bytes:
    """One (3, R, R) uint8 picture as JPEG bytes; widened (index % 3 == 1) or heightened
    (index % 3 == 2) by repeating its edges, so the centre crop of the loader gives it back."""
    from PIL import Image

    hwc = np.ascontiguousarray(pixels.transpose(1, 2, 0))
    pad = {0: None, 1: ((0, 0), (PAD, PAD), (0, 0)), 2: ((PAD, PAD), (0, 0), (0, 0))}[index % 3]
    if pad is not None:
        hwc = np.pad(hwc, pad, mode="edge")
    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _write_split(spec: EmbeddedSpec, split: str, first_id: int, root: Path) -> tuple[list[dict], list[str]]:
    """Write the pictures of one split under ``root``; returns its annotation entries and captions."""
    data, _ = render_split(spec, split)
    captions_of: list[list[str]] = [[] for _ in range(data.n_images)]
    for caption, image in zip(data.captions, data.caption_image.tolist()):
        captions_of[image].append(caption)
    entries: list[dict] = []
    for i, captions in enumerate(captions_of):
        image_id = str(first_id + i)
        rel = f"{IMAGE_DIR}/{image_id}.jpg"
        (root / rel).write_bytes(_jpeg(data.images[i].numpy(), i))
        if split == "train":
            entries.extend({"image": rel, "caption": c, "image_id": image_id} for c in captions)
        else:
            entries.append({"image": rel, "caption": captions})
    return entries, list(data.captions)


def _build(spec: ToySpec, root: Path) -> None:
    """Everything of the toy set, written under ``root`` (a fresh directory)."""
    embedded = spec.embedded()
    (root / IMAGE_DIR).mkdir(parents=True)
    (root / "annotations").mkdir()
    first_id, all_captions = 1000, []
    for split in SPLITS:
        entries, captions = _write_split(embedded, split, first_id, root)
        first_id += embedded.n_images(split)
        all_captions.extend(captions)
        text = json.dumps(entries, indent=1, ensure_ascii=False) + "\n"
        (root / "annotations" / annotation_name(split)).write_text(text, encoding="utf-8")
    save_tiny_bert(root / TEXT_MODEL_DIR, caption_words(all_captions), seed=spec.seed)
    (root / MARKER).write_text(json.dumps({"version": TOY_VERSION, **asdict(spec)}, indent=1) + "\n")


def _check_replaceable(out: Path) -> None:
    """``out`` may be replaced: absent, an empty directory, or a toy set written earlier."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise ToyOutputError(f"{out} exists and is not a directory; choose another output directory")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise ToyOutputError(f"{out} is not empty and holds no {MARKER} (not a toy set written by "
                             "python -m bench.data.toy); choose another output directory or empty it")


def write_toy(out: str | Path, spec: ToySpec | None = None) -> Path:
    """Write the toy set to ``out`` (see the module docstring); returns ``out``.

    Built in a sibling temporary directory and renamed into place; a toy set already at
    ``out`` is replaced, anything else there is refused (:class:`ToyOutputError`)."""
    spec = spec or ToySpec()
    spec.embedded()  # a bad size fails before anything is written
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        _build(spec, temp)
        if out.exists():
            shutil.rmtree(out)
        temp.rename(out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.data.toy",
        description="Write a tiny Karpathy-format dataset (JPEG + JSON) and a tiny local BERT directory, offline.")
    parser.add_argument("out", nargs="?", default=DEFAULT_OUT,
                        help=f"output directory (default {DEFAULT_OUT}, which configs/flickr30k_smoke.yaml reads)")
    defaults = ToySpec()
    for split in SPLITS:
        parser.add_argument(f"--{split}-images", type=int, default=getattr(defaults, f"n_{split}_images"),
                            help=f"images in the {split} split (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of every random choice (default 0)")
    args = parser.parse_args(argv)
    try:
        spec = ToySpec(n_train_images=args.train_images, n_val_images=args.val_images,
                       n_test_images=args.test_images, seed=args.seed)
        out = write_toy(args.out, spec)
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_pairs = spec.n_train_images * spec.captions_per_image
    print(f"wrote {out}: {spec.n_train_images} train images ({n_pairs} pairs), {spec.n_val_images} val, "
          f"{spec.n_test_images} test; annotations in {out / 'annotations'}, text model {out / TEXT_MODEL_DIR}")
    if Path(args.out) != Path(DEFAULT_OUT):
        print(f"configs/flickr30k_smoke.yaml reads {DEFAULT_OUT}; for this directory add\n"
              f"  --set datasets.0.karpathy.image_root={out} "
              + " ".join(f"--set datasets.0.karpathy.{s}_json={out / 'annotations' / annotation_name(s)}"
                         for s in SPLITS)
              + f" --set datasets.0.text_encoder.path={out / TEXT_MODEL_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
