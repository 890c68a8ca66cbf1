"""The embedded dataset's pixels, rendered once per cache directory and memory-mapped.

Rendering is most of the generator's time (29,000 images in Flickr30K's shape: minutes on one
core), and every process that prepares the dataset rendered them again: the driver of each
run, each Ray worker, each piece of a grid split over sessions, each ``tune`` call. The pixels
now go to the image cache (:mod:`bench.data.image_cache`, the one Karpathy data uses):
``images/embedded-<R>px-<content key>.{u8,json}``, one uint8 file mapped copy-on-write, so
processes share its pages instead of each holding a copy. The content key covers the generator
version and the whole spec, so another spec or generator never reads these pixels.

The captions are not stored: they are drawn again from the same streams without rendering a
pixel (:func:`bench.data.embedded.embedded_captions`, about a third of the generator's time),
so the cache can never hand out a caption of another generator.
"""

from __future__ import annotations

import os

from bench.data.embedded import (
    SPLITS,
    EmbeddedSpec,
    assemble_split,
    embedded_captions,
    embedded_content_key,
    generate_embedded,
    image_names,
)
from bench.data.image_cache import read_image_cache, write_image_cache
from bench.data.types import Dataset

NAME = "embedded"
#: The image-cache format of rendered embedded pixels (the ``format`` its description names).
FORMAT = "embedded-render-v1"


def load_embedded(spec: EmbeddedSpec, cache_dir: str | os.PathLike[str]) -> Dataset:
    """The embedded dataset of ``spec``: pixels from the cache (rendered and written there the
    first time), captions drawn again. Equal, split by split, to :func:`generate_embedded`."""
    key = embedded_content_key(spec)
    names = {split: image_names(spec, split) for split in SPLITS}
    args = (cache_dir, NAME, spec.resolution, key, FORMAT, names)
    images = read_image_cache(*args)
    if images is None:
        generated = generate_embedded(spec)
        images = write_image_cache(*args, fill=lambda split, out: out.__setitem__(
            Ellipsis, generated.split(split).images.numpy()))
        captions = {split: generated.split(split).captions for split in SPLITS}
        del generated  # the mapped file replaces the rendered pixels: nothing held twice
    else:
        captions = {split: embedded_captions(spec, split) for split in SPLITS}
    splits = {split: assemble_split(spec, split, images[split], captions[split]) for split in SPLITS}
    return Dataset(name=NAME, content_key=key, **splits)
