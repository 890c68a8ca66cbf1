"""The embedded default dataset: compositional shape scenes with true captions, no download.

Every image is a small scene of one to three objects. Each object has a shape, a colour, a
size class, a texture and a continuous position; the background has a named colour with a
random shade, a soft gradient and mild pixel noise. Each image gets ``captions_per_image``
captions, each from a different template family (counts, single-object descriptions with
different attribute subsets, spatial and size relations, colour/texture/shape summaries,
background mentions), so that no small set of classes describes the data: a retrieval model
has to read the composition.

Every statement in a caption is true of its image. Relations are computed from the sampled
object positions and sizes with a margin, so "to the left of" is never a coin flip, and
"the X" is used only when the description picks out exactly one object of the scene.

Determinism: every random choice goes through an explicit ``np.random.Generator``. The three
splits draw from independent streams spawned from ``spec.seed`` (``SeedSequence(seed).spawn(3)``
-> train, val, test), and inside a split the scene, caption and pixel-noise draws use three
further child streams. So changing ``n_train_images`` leaves val and test untouched, changing
``captions_per_image`` leaves the pixels untouched, and the first k images of a split do not
depend on how many images follow them.

Rendering: objects are drawn with numpy masks on a canvas supersampled 4x (2x above 64 px)
and box-downsampled, which gives clean anti-aliased silhouettes. Textures (diagonal stripes,
checks, dots) have a period tied to the output resolution (4 px at 32 px, R/8 above) and are
evaluated at output-pixel centres, so they stay crisp instead of blurring into mixed pixels;
their second colour is a dark shade or pale tint of the object colour, whichever contrasts
more. The default spec (1,700 images at 32 px) takes under a second on a 2-core CPU.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from bench.core.io import stable_hash
from bench.data.types import Dataset, Split

#: Bump whenever the output of :func:`generate_embedded` changes for some spec, so that caches
#: keyed by ``Dataset.content_key`` (e.g. caption embeddings) are invalidated.
GENERATOR_VERSION = "embedded-v1"

SPLITS = ("train", "val", "test")

# --------------------------------------------------------------------------------------------
# Vocabulary. Object colour names and background names are disjoint, so a colour word in a
# caption always refers to an object.
# --------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "star")
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
    "cross": "crosses", "ring": "rings", "star": "stars",
}

#: Saturated colours chosen to stay apart after downsampling to 32 px.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 165, 55),
    "cyan": (40, 200, 215),
    "blue": (40, 80, 225),
    "purple": (135, 55, 185),
    "pink": (245, 125, 195),
}

#: Background names (muted, disjoint from the object colour words).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (238, 238, 235),
    "light grey": (195, 195, 195),
    "grey": (140, 140, 140),
    "dark grey": (80, 80, 80),
    "black": (28, 28, 30),
    "beige": (222, 205, 170),
    "brown": (105, 75, 55),
    "navy": (30, 40, 85),
    "olive": (105, 105, 60),
}

SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_WORDS: dict[str, str] = {"small": "small", "medium": "medium-sized", "large": "large"}
#: Object radius as a fraction of the image side (the shape fits in a circle of that radius).
SIZE_RADIUS: dict[str, float] = {"small": 0.14, "medium": 0.19, "large": 0.25}
SIZE_JITTER = 0.04  # relative; small enough that size classes never overlap

TEXTURES: tuple[str, ...] = ("solid", "striped", "checkered", "dotted")

GENERIC_NOUNS: tuple[str, ...] = ("shape", "object", "figure")
GENERIC_PLURALS: dict[str, str] = {"shape": "shapes", "object": "objects", "figure": "figures"}
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}

#: Regions are the thirds of the image that the object's centre falls in: (row, column).
REGION_NAMES: dict[tuple[int, int], str] = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
#: The phrases that may express each region in a caption.
REGION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "at the top left"),
    "top right": ("in the top right", "at the top right"),
    "bottom left": ("in the bottom left", "at the bottom left"),
    "bottom right": ("in the bottom right", "at the bottom right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "center": ("in the center", "in the middle"),
}

#: Minimum centre offset (fraction of the image side) before "left of"/"above" is stated.
RELATION_MARGIN = 0.15
#: Centres of two objects are at least this fraction of the sum of their radii apart.
MIN_SEPARATION = 0.95
#: Minimum RGB distance between an object's colour and its background.
MIN_CONTRAST = 110.0

N_OBJECTS_PROBS = (0.25, 0.40, 0.35)  # one, two, three objects


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedSpec:
    """Sizes, resolution and seed of the embedded dataset."""

    n_train_images: int = 1000
    n_val_images: int = 200
    n_test_images: int = 500
    captions_per_image: int = 5
    resolution: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"EmbeddedSpec.{f.name} must be an integer, got {value!r}")
        for name in ("n_train_images", "n_val_images", "n_test_images"):
            if getattr(self, name) <= 0:
                raise ValueError(f"EmbeddedSpec.{name} must be positive, got {getattr(self, name)}")
        if self.resolution < 16:
            raise ValueError(f"EmbeddedSpec.resolution must be >= 16 pixels, got {self.resolution}")
        if not 1 <= self.captions_per_image <= MAX_CAPTIONS_PER_IMAGE:
            raise ValueError(
                f"EmbeddedSpec.captions_per_image must be between 1 and {MAX_CAPTIONS_PER_IMAGE} "
                f"(the number of caption template families that apply to every scene), "
                f"got {self.captions_per_image}"
            )
        if self.seed < 0:
            raise ValueError(f"EmbeddedSpec.seed must be non-negative, got {self.seed}")

    def n_images(self, split: str) -> int:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        return int(getattr(self, f"n_{split}_images"))


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One object; positions and radius are fractions of the image side, y grows downwards."""

    shape: str
    colour: str
    size: str
    texture: str
    cx: float
    cy: float
    radius: float
    rgb: tuple[float, float, float]

    @property
    def region(self) -> str:
        col = min(int(self.cx * 3), 2)
        row = min(int(self.cy * 3), 2)
        return REGION_NAMES[(row, col)]


@dataclass(frozen=True)
class Scene:
    background: str
    bg_rgb: tuple[float, float, float]
    gradient: tuple[float, float]  # (amplitude in grey levels, direction in radians)
    objects: tuple[SceneObject, ...]


def _sample_background(rng: np.random.Generator) -> tuple[str, tuple[float, float, float], tuple[float, float]]:
    names = list(BACKGROUNDS)
    name = names[int(rng.integers(len(names)))]
    base = np.asarray(BACKGROUNDS[name], dtype=np.float64)
    shade = rng.uniform(0.9, 1.1)
    tint = rng.uniform(-6.0, 6.0, size=3)
    rgb = np.clip(base * shade + tint, 0.0, 255.0)
    gradient = (float(rng.uniform(0.0, 18.0)), float(rng.uniform(0.0, 2.0 * math.pi)))
    return name, (float(rgb[0]), float(rgb[1]), float(rgb[2])), gradient


def _sample_colour(rng: np.random.Generator, bg_rgb: np.ndarray) -> tuple[str, tuple[float, float, float]]:
    names = list(COLOURS)
    allowed = [c for c in names if np.linalg.norm(np.asarray(COLOURS[c], float) - bg_rgb) >= MIN_CONTRAST]
    name = allowed[int(rng.integers(len(allowed)))]
    rgb = np.clip(np.asarray(COLOURS[name], float) + rng.uniform(-10.0, 10.0, size=3), 0.0, 255.0)
    return name, (float(rgb[0]), float(rgb[1]), float(rgb[2]))


def _sample_scene(rng: np.random.Generator) -> Scene:
    background, bg_rgb, gradient = _sample_background(rng)
    bg = np.asarray(bg_rgb)
    n_objects = int(rng.choice(3, p=N_OBJECTS_PROBS)) + 1
    while True:  # rejection sampling of non-overlapping placements; succeeds in a few tries
        sizes = [SIZES[int(rng.integers(3))] for _ in range(n_objects)]
        radii = [SIZE_RADIUS[s] * (1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)) for s in sizes]
        centres: list[tuple[float, float]] = []
        for r in radii:
            for _ in range(60):
                cx, cy = rng.uniform(r, 1.0 - r, size=2)
                if all(
                    math.hypot(cx - ox, cy - oy) >= MIN_SEPARATION * (r + orad)
                    for (ox, oy), orad in zip(centres, radii)
                ):
                    centres.append((float(cx), float(cy)))
                    break
            else:
                break
        if len(centres) == n_objects:
            break
    objects = []
    for size, r, (cx, cy) in zip(sizes, radii, centres):
        colour, rgb = _sample_colour(rng, bg)
        objects.append(
            SceneObject(
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                colour=colour,
                size=size,
                texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
                cx=cx,
                cy=cy,
                radius=float(r),
                rgb=rgb,
            )
        )
    return Scene(background=background, bg_rgb=bg_rgb, gradient=gradient, objects=tuple(objects))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _polygon_mask(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, broadcast over u (1, w) and v (h, 1)."""
    inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    x1, y1 = vertices[:, 0], vertices[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for a, b, c, d in zip(x1, y1, x2, y2):
        if b == d:
            continue
        crosses = (b > v) != (d > v)
        x_at = a + (c - a) * (v - b) / (d - b)
        inside ^= crosses & (u < x_at)
    return inside


def _star_vertices(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles) + 0.08], axis=1)


_TRIANGLE = np.array([[0.0, -0.92], [0.98, 0.78], [-0.98, 0.78]])
_STAR = _star_vertices()

#: Shape masks in object coordinates (u, v in units of the object radius, v downwards).
_SHAPE_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 0.88**2,
    "square": lambda u, v: (np.abs(u) <= 0.74) & (np.abs(v) <= 0.74),
    "triangle": lambda u, v: _polygon_mask(u, v, _TRIANGLE),
    "diamond": lambda u, v: np.abs(u) / 0.82 + np.abs(v) <= 1.0,
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)),
    "ring": lambda u, v: (u * u + v * v <= 0.95**2) & (u * u + v * v >= 0.5**2),
    "star": lambda u, v: _polygon_mask(u, v, _STAR),
}
assert set(_SHAPE_MASKS) == set(SHAPES)


def _texture_period(resolution: int) -> int:
    """Texture period in output pixels: 4 px at 32 px, growing with the resolution; even, so
    that checks and stripes are whole pixels wide."""
    return 2 * max(2, round(resolution / 16))


def _texture_mask(texture: str, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    """Where the secondary colour goes; x (1, w) and y (h, 1) are output-pixel centres relative
    to the pattern anchor (the pixel corner nearest the object centre), so the pattern moves
    with the object."""
    if texture == "solid":
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    if texture == "striped":  # diagonal stripes, half the period each
        return np.mod(x + y - 1.0, period) < period / 2
    if texture == "checkered":
        cell = period / 2
        return (np.floor(x / cell) + np.floor(y / cell)) % 2 == 1
    if texture == "dotted":  # sparser than the checks, one dot on the object centre
        # dots centred on pixel centres, one of them next to the object centre
        dx = np.mod(x - 0.5 + period / 2, period) - period / 2
        dy = np.mod(y - 0.5 + period / 2, period) - period / 2
        return dx * dx + dy * dy <= (0.3 * period) ** 2
    raise ValueError(f"unknown texture {texture!r}")


def _luminance(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _secondary_rgb(rgb: np.ndarray, bg_rgb: np.ndarray) -> np.ndarray:
    """The texture's second colour: a dark shade or a pale tint of the object colour, whichever
    differs more in brightness from it (dark for yellow, pale for blue), with a small bonus for
    standing out from the background (the silhouette). Brightness contrast is what survives
    at 32 px."""
    candidates = (rgb * 0.3, rgb * 0.3 + 0.7 * 250.0)
    lum, bg_lum = _luminance(rgb), _luminance(bg_rgb)
    scores = [abs(_luminance(c) - lum) + 0.6 * abs(_luminance(c) - bg_lum) for c in candidates]
    return candidates[int(np.argmax(scores))]


def _supersample_factor(resolution: int) -> int:
    return 4 if resolution <= 64 else 2


def _render_scene(scene: Scene, resolution: int, noise: np.ndarray) -> np.ndarray:
    """Render one scene as float (3, R, R) in [0, 255] before quantisation."""
    s = _supersample_factor(resolution)
    big = resolution * s
    coords = (np.arange(big, dtype=np.float32) + 0.5) / s  # output-pixel units
    rel = coords / resolution - 0.5
    amp, angle = scene.gradient
    ramp = amp * (rel[None, :] * math.cos(angle) + rel[:, None] * math.sin(angle))
    canvas = np.asarray(scene.bg_rgb, dtype=np.float32)[:, None, None] + ramp[None, :, :]
    canvas = np.ascontiguousarray(canvas)
    period = _texture_period(resolution)
    bg = np.asarray(scene.bg_rgb)
    for obj in scene.objects:
        r_px = obj.radius * resolution
        cx_px, cy_px = obj.cx * resolution, obj.cy * resolution
        x0 = max(int(math.floor((cx_px - r_px) * s)) - 1, 0)
        x1 = min(int(math.ceil((cx_px + r_px) * s)) + 1, big)
        y0 = max(int(math.floor((cy_px - r_px) * s)) - 1, 0)
        y1 = min(int(math.ceil((cy_px + r_px) * s)) + 1, big)
        dx = (coords[x0:x1] - cx_px)[None, :]
        dy = (coords[y0:y1] - cy_px)[:, None]
        mask = _SHAPE_MASKS[obj.shape](dx / r_px, dy / r_px)
        primary = np.asarray(obj.rgb, dtype=np.float32)
        secondary = _secondary_rgb(primary, bg).astype(np.float32)
        # Textures are evaluated at output-pixel centres (only the silhouette is anti-aliased),
        # so stripes, checks and dots stay crisp instead of blurring into mixed pixels.
        px = np.floor(coords[x0:x1]) + 0.5 - round(cx_px)
        py = np.floor(coords[y0:y1]) + 0.5 - round(cy_px)
        tex = _texture_mask(obj.texture, px[None, :], py[:, None], period)
        colour = np.where(tex[None], secondary[:, None, None], primary[:, None, None])
        region = canvas[:, y0:y1, x0:x1]
        region[:, mask] = colour[:, mask]
    image = canvas.reshape(3, resolution, s, resolution, s).mean(axis=(2, 4))
    return image + noise


def _render_scenes(scenes: Sequence[Scene], resolution: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((len(scenes), 3, resolution, resolution), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        # Mild noise: a shared luminance part plus a smaller per-channel part.
        noise = rng.normal(0.0, 3.0, size=(1, resolution, resolution)) + rng.normal(
            0.0, 2.0, size=(3, resolution, resolution)
        )
        image = _render_scene(scene, resolution, noise.astype(np.float32))
        out[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

ATTRIBUTES = ("size", "texture", "colour")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _np(obj: SceneObject, attrs: Sequence[str], noun: str | None = None) -> str:
    """Noun phrase without article: adjectives in English order (size, texture, colour)."""
    words = []
    if "size" in attrs:
        words.append(SIZE_WORDS[obj.size])
    if "texture" in attrs:
        words.append(obj.texture)
    if "colour" in attrs:
        words.append(obj.colour)
    words.append(noun or obj.shape)
    return " ".join(words)


def _matches(obj: SceneObject, ref: SceneObject, attrs: Sequence[str], generic: bool) -> bool:
    if not generic and obj.shape != ref.shape:
        return False
    return all(getattr(obj, a) == getattr(ref, a) for a in attrs)


def _random_attrs(rng: np.random.Generator, allowed: Sequence[str] = ATTRIBUTES, p: float = 0.5) -> list[str]:
    return [a for a in allowed if rng.random() < p]


def _noun(rng: np.random.Generator, obj: SceneObject, attrs: Sequence[str], p_generic: float = 0.2) -> str:
    """The shape word, or sometimes a generic noun when adjectives still say something."""
    if attrs and rng.random() < p_generic:
        return _pick(rng, GENERIC_NOUNS)
    return obj.shape


def _referring(
    rng: np.random.Generator, scene: Scene, obj: SceneObject, allowed: Sequence[str]
) -> tuple[str, bool]:
    """A description of ``obj`` and whether it is unique in the scene (then "the" is allowed).

    Starts from a random attribute subset and adds attributes until the description picks out
    exactly one object, or all allowed attributes are used.
    """
    attrs = _random_attrs(rng, allowed, p=0.4)
    remaining = [a for a in allowed if a not in attrs]
    order = [remaining[i] for i in rng.permutation(len(remaining))]
    while True:
        unique = sum(_matches(o, obj, attrs, generic=False) for o in scene.objects) == 1
        if unique or not order:
            break
        attrs.append(order.pop())
    attrs = [a for a in ATTRIBUTES if a in attrs]
    return _np(obj, attrs), unique


def _region_phrase(rng: np.random.Generator, obj: SceneObject) -> str:
    return _pick(rng, REGION_PHRASES[obj.region])


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _group_phrase(values: Sequence[str], noun: str) -> str:
    """'two red shapes and a blue one' from ['red', 'red', 'blue']."""
    counts = Counter(values)
    ordered = sorted(counts, key=lambda v: (-counts[v], values.index(v)))
    parts = []
    for j, value in enumerate(ordered):
        k = counts[value]
        if j == 0:
            noun_form = GENERIC_PLURALS[noun] if k > 1 else noun
            quantity = COUNT_WORDS[k] if k > 1 else _article(value)
            parts.append(f"{quantity} {value} {noun_form}")
        else:
            parts.append(f"{COUNT_WORDS[k]} {value} ones" if k > 1 else f"{_article(value)} {value} one")
    return _join(parts)


# Each family takes (rng, scene) and returns a caption. Families in ALWAYS apply to every scene.


def _cap_count_background(rng: np.random.Generator, scene: Scene) -> str:
    n = len(scene.objects)
    noun = _pick(rng, GENERIC_NOUNS)
    count = f"a single {noun}" if n == 1 else f"{COUNT_WORDS[n]} {GENERIC_PLURALS[noun]}"
    bg = scene.background
    templates = (
        f"{count} on {_with_article(bg)} background",
        f"{count} against {_with_article(bg)} background",
        f"{_with_article(bg)} background with {count}",
    )
    return _pick(rng, templates)


def _cap_full(rng: np.random.Generator, scene: Scene) -> str:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    phrase = f"{_with_article(_np(obj, ATTRIBUTES))} {_region_phrase(rng, obj)}"
    return _pick(rng, (phrase, f"there is {phrase}"))


def _cap_partial(rng: np.random.Generator, scene: Scene) -> str:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    with_position = rng.random() < 0.5
    attrs = _random_attrs(rng)
    if with_position and len(attrs) == len(ATTRIBUTES):  # leave the full description to _cap_full
        attrs.pop(int(rng.integers(len(attrs))))
    phrase = _with_article(_np(obj, attrs, _noun(rng, obj, attrs)))
    if with_position:
        phrase += " " + _region_phrase(rng, obj)
    return _pick(rng, (f"a picture of {phrase}", f"an image with {phrase}", f"a view of {phrase}"))


def _cap_colour_summary(rng: np.random.Generator, scene: Scene) -> str:
    colours = [o.colour for o in scene.objects]
    noun = _pick(rng, GENERIC_NOUNS)
    if len(colours) == 1:
        return _pick(rng, (f"a single {colours[0]} {noun}", f"just one {noun}, and it is {colours[0]}"))
    if len(set(colours)) == 1:
        every = "both" if len(colours) == 2 else "all the"
        return _pick(rng, (f"{every} {GENERIC_PLURALS[noun]} are {colours[0]}",
                           f"{COUNT_WORDS[len(colours)]} {colours[0]} {GENERIC_PLURALS[noun]}"))
    if len(set(colours)) == len(colours) and rng.random() < 0.5:
        shuffled = [colours[i] for i in rng.permutation(len(colours))]
        return f"{GENERIC_PLURALS[noun]} in {_join(shuffled)}"
    return _group_phrase(colours, noun)


def _cap_texture_summary(rng: np.random.Generator, scene: Scene) -> str:
    textures = [o.texture for o in scene.objects]
    noun = _pick(rng, GENERIC_NOUNS)
    n = len(textures)
    if n == 1:
        return _pick(rng, (f"the only {noun} is {textures[0]}", f"one {textures[0]} {noun} and nothing else"))
    if len(set(textures)) == 1:
        every = "both" if n == 2 else "all three"
        return f"{every} {GENERIC_PLURALS[noun]} are {textures[0]}"
    if rng.random() < 0.5:
        texture = _pick(rng, sorted(set(textures)))
        k = textures.count(texture)
        verb = "is" if k == 1 else "are"
        return f"{COUNT_WORDS[k]} of the {GENERIC_PLURALS[noun]} {verb} {texture}"
    return _group_phrase(textures, noun)


def _cap_shape_counts(rng: np.random.Generator, scene: Scene) -> str:
    shapes = [o.shape for o in scene.objects]
    if len(shapes) == 1:
        return _pick(rng, (f"only one {shapes[0]}", f"a lone {shapes[0]}"))
    counts = Counter(shapes)
    ordered = sorted(counts, key=lambda v: (-counts[v], shapes.index(v)))
    parts = [
        f"{COUNT_WORDS[counts[s]]} {SHAPE_PLURALS[s]}" if counts[s] > 1 else _with_article(s) for s in ordered
    ]
    return _join(parts)


def _cap_list(rng: np.random.Generator, scene: Scene) -> str:
    objs = list(scene.objects)
    attrs = ["texture", "colour"] if rng.random() < 0.3 else ["colour"]
    if len(objs) == 1:
        return _pick(rng, ("just ", "nothing but ")) + _with_article(_np(objs[0], attrs))
    by_x = sorted(objs, key=lambda o: o.cx)
    ordered_ok = all(b.cx - a.cx >= RELATION_MARGIN for a, b in zip(by_x, by_x[1:]))
    if ordered_ok and rng.random() < 0.5:
        return "from left to right: " + _join([_with_article(_np(o, attrs)) for o in by_x])
    shuffled = [objs[i] for i in rng.permutation(len(objs))]
    return _join([_with_article(_np(o, attrs)) for o in shuffled])


def _cap_location_first(rng: np.random.Generator, scene: Scene) -> str:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    attrs = _random_attrs(rng)
    phrase = _with_article(_np(obj, attrs, _noun(rng, obj, attrs)))
    where = _region_phrase(rng, obj)
    return _pick(rng, (f"{where} there is {phrase}", f"{where}: {phrase}"))


def _cap_background_object(rng: np.random.Generator, scene: Scene) -> str:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    attrs = _random_attrs(rng)
    phrase = _with_article(_np(obj, attrs, _noun(rng, obj, attrs)))
    bg = _with_article(scene.background)
    return _pick(rng, (f"{phrase} on {bg} background", f"{phrase} in front of {bg} background"))


def _relation_caption(
    rng: np.random.Generator,
    scene: Scene,
    pairs: list[tuple[SceneObject, SceneObject]],
    forward: Sequence[str],
    backward: Sequence[str],
    allowed: Sequence[str],
) -> str:
    """``pairs`` hold (a, b) with a R b for the relation phrased by ``forward``; ``backward``
    phrases the converse (b R' a)."""
    a, b = pairs[int(rng.integers(len(pairs)))]
    if rng.random() < 0.5:
        verb = _pick(rng, forward)
    else:
        a, b = b, a
        verb = _pick(rng, backward)
    ref_a, unique_a = _referring(rng, scene, a, allowed)
    ref_b, unique_b = _referring(rng, scene, b, allowed)
    if unique_a and unique_b and rng.random() < 0.6:
        return f"the {ref_a} is {verb} the {ref_b}"
    phrase = f"{_with_article(ref_a)} {verb} {_with_article(ref_b)}"
    return _pick(rng, (phrase, f"there is {phrase}"))


def _horizontal_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject]]:
    return [(a, b) for a in scene.objects for b in scene.objects if b.cx - a.cx >= RELATION_MARGIN]


def _vertical_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject]]:
    return [(a, b) for a in scene.objects for b in scene.objects if b.cy - a.cy >= RELATION_MARGIN]


def _size_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject]]:
    rank = {s: i for i, s in enumerate(SIZES)}
    return [(a, b) for a in scene.objects for b in scene.objects if rank[a.size] > rank[b.size]]


def _cap_left_right(rng: np.random.Generator, scene: Scene) -> str:
    return _relation_caption(
        rng, scene, _horizontal_pairs(scene), ("to the left of",), ("to the right of",), ATTRIBUTES
    )


def _cap_above_below(rng: np.random.Generator, scene: Scene) -> str:
    return _relation_caption(rng, scene, _vertical_pairs(scene), ("above",), ("below",), ATTRIBUTES)


def _cap_bigger_smaller(rng: np.random.Generator, scene: Scene) -> str:
    return _relation_caption(
        rng, scene, _size_pairs(scene), ("bigger than", "larger than"), ("smaller than",), ("texture", "colour")
    )


@dataclass(frozen=True)
class _Family:
    name: str
    make: Callable[[np.random.Generator, Scene], str]
    weight: float
    applies: Callable[[Scene], bool]


def _always(scene: Scene) -> bool:
    return True


CAPTION_FAMILIES: tuple[_Family, ...] = (
    _Family("count_background", _cap_count_background, 1.0, _always),
    _Family("full_description", _cap_full, 1.5, _always),
    _Family("partial_description", _cap_partial, 1.5, _always),
    _Family("colour_summary", _cap_colour_summary, 1.0, _always),
    _Family("texture_summary", _cap_texture_summary, 1.0, _always),
    _Family("shape_counts", _cap_shape_counts, 1.0, _always),
    _Family("object_list", _cap_list, 1.0, _always),
    _Family("location_first", _cap_location_first, 1.0, _always),
    _Family("background_object", _cap_background_object, 1.0, _always),
    _Family("left_right", _cap_left_right, 3.0, lambda s: bool(_horizontal_pairs(s))),
    _Family("above_below", _cap_above_below, 3.0, lambda s: bool(_vertical_pairs(s))),
    _Family("bigger_smaller", _cap_bigger_smaller, 3.0, lambda s: bool(_size_pairs(s))),
)

#: Families that apply to every scene (a one-object scene has no relations): the most captions
#: per image we can give, each from a different family.
MAX_CAPTIONS_PER_IMAGE = sum(1 for f in CAPTION_FAMILIES if f.applies is _always)


def _captions_for_scene(scene: Scene, k: int, rng: np.random.Generator) -> tuple[tuple[str, str], ...]:
    """``k`` pairwise distinct captions as (family name, text), each from a different family.

    Families are drawn without replacement with probability proportional to their weight
    (Efraimidis-Spirakis keys), favouring relations when the scene has them.
    """
    families = [f for f in CAPTION_FAMILIES if f.applies(scene)]
    weights = np.array([f.weight for f in families])
    keys = rng.random(len(families)) ** (1.0 / weights)
    order = [families[i] for i in np.argsort(-keys, kind="stable")]
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for family in order:
        for _ in range(5):  # a family's random phrasing may coincide with an earlier caption
            text = family.make(rng, scene)
            if text not in seen:
                break
        else:
            continue
        chosen.append((family.name, text))
        seen.add(text)
        if len(chosen) == k:
            return tuple(chosen)
    raise RuntimeError(f"could not make {k} distinct captions for scene {scene}")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Splits and dataset
# --------------------------------------------------------------------------------------------


def _split_streams(
    spec: EmbeddedSpec, split: str
) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """(scene, caption, pixel-noise) generators of one split, independent of the other splits."""
    split_seq = np.random.SeedSequence(spec.seed).spawn(len(SPLITS))[SPLITS.index(split)]
    scene_seq, caption_seq, noise_seq = split_seq.spawn(3)
    return (
        np.random.default_rng(scene_seq),
        np.random.default_rng(caption_seq),
        np.random.default_rng(noise_seq),
    )


def _split_scenes(spec: EmbeddedSpec, split: str) -> list[Scene]:
    """The scene description of every image of a split (what the pixels and captions show)."""
    scene_rng, _, _ = _split_streams(spec, split)
    return [_sample_scene(scene_rng) for _ in range(spec.n_images(split))]


def _scenes_and_captions(
    spec: EmbeddedSpec, split: str
) -> tuple[list[Scene], list[str], list[tuple[str, ...]], np.random.Generator]:
    """The scenes of a split, their captions, each image's caption families, and the
    pixel-noise generator (captions never depend on pixels, so they can be made alone)."""
    scene_rng, caption_rng, noise_rng = _split_streams(spec, split)
    scenes = [_sample_scene(scene_rng) for _ in range(spec.n_images(split))]
    captions: list[str] = []
    families: list[tuple[str, ...]] = []
    for scene in scenes:
        pairs = _captions_for_scene(scene, spec.captions_per_image, caption_rng)
        families.append(tuple(f for f, _ in pairs))
        captions.extend(text for _, text in pairs)
    return scenes, captions, families, noise_rng


def embedded_captions(spec: EmbeddedSpec, split: str) -> tuple[str, ...]:
    """The captions of one split, without rendering a pixel (what a cache entry written before
    captions were stored, and a listing of a cache without an entry, need)."""
    return tuple(_scenes_and_captions(spec, split)[1])


def _generate_split(spec: EmbeddedSpec, split: str) -> tuple[Split, list[Scene], list[tuple[str, ...]]]:
    """One split, its scenes, and the template family of each caption (per image)."""
    scenes, captions, families, noise_rng = _scenes_and_captions(spec, split)
    pixels = _render_scenes(scenes, spec.resolution, noise_rng)
    return assemble_split(spec, split, torch.from_numpy(pixels), captions), scenes, families


def image_names(spec: EmbeddedSpec, split: str) -> tuple[str, ...]:
    """The synthetic id of every image of a split."""
    return tuple(f"embedded/{split}/{i:06d}" for i in range(spec.n_images(split)))


def assemble_split(spec: EmbeddedSpec, split: str, images: torch.Tensor, captions: Sequence[str]) -> Split:
    """A split from its pixels and captions (rendered here, or read from the pixel cache:
    :mod:`bench.data.embedded_cache`): ``captions_per_image`` consecutive captions per image."""
    n = spec.n_images(split)
    return Split(
        images=images,
        captions=tuple(captions),
        caption_image=torch.arange(n, dtype=torch.int64).repeat_interleave(spec.captions_per_image),
        image_names=image_names(spec, split),
    )


def render_split(spec: EmbeddedSpec, split: str = "train") -> tuple[Split, list[Scene]]:
    """One split with the scene behind each image (objects, attributes, positions): labels for
    pretraining an image tower on a corpus of other seeds (see bench/models/pretrain.py)."""
    split_obj, scenes, _ = _generate_split(spec, split)
    return split_obj, scenes


def embedded_content_key(spec: EmbeddedSpec) -> str:
    return stable_hash({"generator": GENERATOR_VERSION, **asdict(spec)})


def generate_embedded(spec: EmbeddedSpec | None = None) -> Dataset:
    """Generate the embedded dataset for ``spec`` (default: :class:`EmbeddedSpec()`)."""
    spec = spec or EmbeddedSpec()
    splits = {name: _generate_split(spec, name)[0] for name in SPLITS}
    return Dataset(name="embedded", content_key=embedded_content_key(spec), **splits)
