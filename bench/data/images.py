"""Decoding image files into fixed-size uint8 tensors.

Generic on purpose: the Karpathy loader uses it, and so will any later image source. Images
are decoded once, at the configured resolution, and cached by the caller; training never
touches JPEG files again.

Geometry: shorter side resized to ``resolution`` with bicubic filtering, then a centred square
crop. This keeps the aspect ratio (no squashing) and the centre of the picture, which is
where the captioned content usually is. EXIF orientation is deliberately *not* applied, to
match how BLIP/ALBEF read these datasets (``Image.open(...).convert("RGB")``).

Colour: everything goes through ``convert("RGB")`` except wide greyscale (16-bit PNG/TIFF,
Pillow modes ``I;16*`` and ``I``), which Pillow would clip at 255 (nearly all white): those
are scaled to 8 bits first (value / 257, so 65535 -> 255), see :func:`to_rgb`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: ``Image.resize(reducing_gap=...)``: first shrink by an integer factor with a cheap box
#: filter, then bicubic for the rest. With a gap of 3 the result is visually identical to a
#: full bicubic resize (Pillow docs) and large photos resize several times faster.
REDUCING_GAP = 3.0

#: Pillow modes of wide (16/32-bit integer) greyscale images; their values span 0..65535.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

#: Called as ``on_error(index, path, error)`` for an image that failed to decode.
OnError = Callable[[int, Path, "ImageDecodeError"], None]


class ImageDecodeError(ValueError):
    """An image file PIL could not open or decode; ``path`` and ``reason`` are kept for callers
    that want to re-word the message (e.g. to name the annotation entry)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot decode image {str(self.path)!r}: {reason}")


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    return resolution


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Shorter side to ``resolution`` (bicubic), then the centred ``resolution``² square."""
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. Wide greyscale is scaled (value / 257, rounded) rather than
    clipped; mode ``I`` is read as 16-bit data, which is what PNG and TIFF files give it."""
    if img.mode in WIDE_GREY_MODES:
        wide = np.asarray(img).astype(np.float32)
        grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")


def decode_image(path: str | os.PathLike[str], resolution: int) -> np.ndarray:
    """Decode one file to a uint8 array (3, resolution, resolution).

    Raises :class:`ImageDecodeError` naming the path and PIL's reason when the file cannot be
    read or decoded (truncated files are errors: we never set ``LOAD_TRUNCATED_IMAGES``).
    """
    _check_resolution(resolution)
    try:
        with Image.open(path) as img:
            rgb = to_rgb(img)  # forces the full decode, so corrupt data fails here
        out = resize_center_crop(rgb, resolution)
        arr = np.asarray(out, dtype=np.uint8)
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        reason = f"{type(exc).__name__}: {exc}"
        raise ImageDecodeError(path, reason) from exc
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _decode_into(out: np.ndarray, index: int, path: Path, resolution: int) -> None:
    out[index] = decode_image(path, resolution)


def decode_images(
    paths: Sequence[str | os.PathLike[str]],
    resolution: int,
    workers: int | None = None,
    on_error: OnError | None = None,
    progress: bool = False,
    description: str = "decoding images",
    out: np.ndarray | None = None,
) -> torch.Tensor:
    """Decode many files in parallel into one preallocated uint8 tensor (n, 3, R, R).

    ``out`` is where to write (e.g. a ``np.memmap`` of the cache file, so a large split never
    has to fit in memory); by default a new array.

    Threads, not processes: Pillow releases the GIL while decoding and resizing, so threads
    scale on the CPU cores without pickling pixels between processes. Each worker writes its
    own row of the output, so no per-image arrays pile up.

    Errors are reported in input order (deterministic). Without ``on_error`` the first
    :class:`ImageDecodeError` is raised. With it, ``on_error(index, path, error)`` is called in
    the calling thread: if it raises, decoding stops (pending work is cancelled) and its
    exception propagates; if it returns, that image is left black and decoding continues.
    """
    _check_resolution(resolution)
    paths = [Path(p) for p in paths]
    n = len(paths)
    shape = (n, 3, resolution, resolution)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {out.shape}")
    if n == 0:
        return torch.from_numpy(out)
    workers = max(1, min(workers or os.cpu_count() or 1, n))

    bar = None
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        task = bar.add_task(description, total=n)
        bar.start()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    try:
        futures: list[Future[None]] = [pool.submit(_decode_into, out, i, p, resolution) for i, p in enumerate(paths)]
        for i, fut in enumerate(futures):
            exc = fut.exception()
            if exc is not None:
                if on_error is None or not isinstance(exc, ImageDecodeError):
                    raise exc
                on_error(i, paths[i], exc)
                out[i] = 0
            if bar is not None:
                bar.advance(task)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.stop()
    return torch.from_numpy(out)
