"""The embedded dataset's pixels (rendered once per cache directory, memory-mapped) and captions.

Rendering is most of the generator's time (29,000 images in Flickr30K's shape: minutes on one
core), and every process that prepares the dataset rendered them again: the driver of each
run, each Ray worker, each piece of a grid split over sessions, each ``tune`` call. The pixels
now go to the image cache (:mod:`bench.data.image_cache`, the one Karpathy data uses):
``images/embedded-<R>px-<content key>.{u8,json}``, one uint8 file mapped copy-on-write, so
processes share its pages instead of each holding a copy. The content key covers the generator
version and the whole spec, so another spec or generator never reads these pixels.

The captions are stored in the entry's description (``captions``, split -> list): drawing them
again from the scene streams without rendering a pixel (:func:`bench.data.embedded.embedded_captions`)
took ~20 s per process at that shape on the 2-core machine (0.1 s to read them), paid again by
every driver, worker and piece. They sit under the same content key as the pixels, so they can
only be the captions of this spec and generator. An entry written before captions were stored
gets them drawn once and added.
"""

from __future__ import annotations

import os
import warnings

from bench.data.embedded import (
    SPLITS,
    EmbeddedSpec,
    assemble_split,
    embedded_captions,
    embedded_content_key,
    generate_embedded,
    image_names,
)
from bench.data.image_cache import entry_paths, read_image_entry, store_captions, stored_captions, write_image_cache
from bench.data.types import Dataset

NAME = "embedded"
#: The image-cache format of rendered embedded pixels (the ``format`` its description names).
FORMAT = "embedded-render-v1"


def load_embedded(spec: EmbeddedSpec, cache_dir: str | os.PathLike[str]) -> Dataset:
    """The embedded dataset of ``spec``: pixels and captions from the cache (rendered and
    written there the first time). Equal, split by split, to :func:`generate_embedded`."""
    key = embedded_content_key(spec)
    names = {split: image_names(spec, split) for split in SPLITS}
    args = (cache_dir, NAME, spec.resolution, key, FORMAT, names)
    entry = read_image_entry(*args)
    if entry is None:
        generated = generate_embedded(spec)
        captions = {split: generated.split(split).captions for split in SPLITS}
        images = write_image_cache(*args, fill=lambda split, out: out.__setitem__(
            Ellipsis, generated.split(split).images.numpy()), captions=captions)
        del generated  # the mapped file replaces the rendered pixels: nothing held twice
    else:
        images, stored = entry
        captions = stored if stored is not None and _fits(spec, stored) else _draw_and_store(spec, cache_dir, key, stored)
    splits = {split: assemble_split(spec, split, images[split], captions[split]) for split in SPLITS}
    return Dataset(name=NAME, content_key=key, **splits)


def cached_captions(spec: EmbeddedSpec, cache_dir: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Each split's captions, from the cache entry when it stores them, else drawn (without
    rendering, and without writing anything: for readers such as ``run_bench.py cache``)."""
    stored = stored_captions(cache_dir, NAME, spec.resolution, embedded_content_key(spec))
    if stored is not None and _fits(spec, stored):
        return stored
    return {split: embedded_captions(spec, split) for split in SPLITS}


def _fits(spec: EmbeddedSpec, captions: dict[str, tuple[str, ...]]) -> bool:
    return all(len(captions[split]) == spec.n_images(split) * spec.captions_per_image for split in SPLITS)


def _draw_and_store(spec: EmbeddedSpec, cache_dir: str | os.PathLike[str], key: str,
                    stored: dict[str, tuple[str, ...]] | None) -> dict[str, tuple[str, ...]]:
    """The captions drawn again, added to the entry for the next reader. Stored captions of the
    wrong count are reported (they were edited: the key vouches for nothing else)."""
    if stored is not None:
        warnings.warn(f"image cache {entry_paths(cache_dir, NAME, spec.resolution, key)[1]} "
                      "stores captions of the wrong count per split; drawing them again", stacklevel=3)
    captions = {split: embedded_captions(spec, split) for split in SPLITS}
    store_captions(cache_dir, NAME, spec.resolution, key, captions)
    return captions
