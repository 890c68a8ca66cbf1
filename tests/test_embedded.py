"""The embedded dataset: determinism, split independence, shapes, and that captions are true."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.data import embedded as emb
from bench.data.embedded import EmbeddedSpec, generate_embedded
from bench.data.types import Dataset

SMALL = EmbeddedSpec(n_train_images=40, n_val_images=10, n_test_images=30, seed=3)

COLOUR_WORDS = set(emb.COLOURS)
SHAPE_WORDS = {**{s: s for s in emb.SHAPES}, **{p: s for s, p in emb.SHAPE_PLURALS.items()}}
TEXTURE_WORDS = set(emb.TEXTURES)
SIZE_WORDS = {"small": "small", "medium": "medium", "large": "large"}
NUMBERS = {"one": 1, "two": 2, "three": 3}
NOUNS = "shapes?|objects?|figures?|ones?"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text)


@pytest.fixture(scope="module")
def small() -> Dataset:
    return generate_embedded(SMALL)


@pytest.fixture(scope="module")
def test_split_500():
    """A 500-image split with its scenes and caption families."""
    return emb._generate_split(EmbeddedSpec(n_test_images=500), "test")


# ---------------------------------------------------------------------------- determinism


def assert_same_split(a, b) -> None:
    assert torch.equal(a.images, b.images)
    assert a.captions == b.captions
    assert torch.equal(a.caption_image, b.caption_image)
    assert a.image_names == b.image_names


def test_same_spec_gives_identical_data(small: Dataset) -> None:
    # Global random state must not matter: only the spec's seed does.
    np.random.seed(123)
    torch.manual_seed(123)
    again = generate_embedded(SMALL)
    for name in ("train", "val", "test"):
        assert_same_split(small.split(name), again.split(name))
    assert small.content_key == again.content_key
    assert small.name == "embedded"


def test_different_seed_gives_different_data(small: Dataset) -> None:
    other = generate_embedded(replace(SMALL, seed=4))
    for name in ("train", "val", "test"):
        assert not torch.equal(small.split(name).images, other.split(name).images)
        assert small.split(name).captions != other.split(name).captions
    assert small.content_key != other.content_key


def test_splits_are_independent_streams(small: Dataset) -> None:
    bigger = generate_embedded(replace(SMALL, n_train_images=55))
    assert_same_split(small.test, bigger.test)
    assert_same_split(small.val, bigger.val)
    # the first images of a split do not depend on how many follow
    assert torch.equal(small.train.images, bigger.train.images[:40])
    assert small.train.captions == bigger.train.captions[: 40 * SMALL.captions_per_image]
    assert small.content_key != bigger.content_key
    # the splits themselves differ
    assert not torch.equal(small.train.images[:10], small.val.images)


def test_caption_count_does_not_change_pixels(small: Dataset) -> None:
    fewer = generate_embedded(replace(SMALL, captions_per_image=2))
    assert torch.equal(small.test.images, fewer.test.images)


def test_content_key_tracks_generator_version(monkeypatch: pytest.MonkeyPatch) -> None:
    key = emb.embedded_content_key(SMALL)
    monkeypatch.setattr(emb, "GENERATOR_VERSION", emb.GENERATOR_VERSION + "-next")
    assert emb.embedded_content_key(SMALL) != key


# ---------------------------------------------------------------------------- structure


def test_shapes_dtypes_and_counts(small: Dataset) -> None:
    k = SMALL.captions_per_image
    for name in ("train", "val", "test"):
        split = small.split(name)
        n = SMALL.n_images(name)
        assert split.images.dtype == torch.uint8
        assert tuple(split.images.shape) == (n, 3, SMALL.resolution, SMALL.resolution)
        assert split.n_captions == n * k
        assert split.caption_image.dtype == torch.int64
        assert torch.equal(split.caption_image, torch.arange(n).repeat_interleave(k))
        assert split.image_names == tuple(f"embedded/{name}/{i:06d}" for i in range(n))
        assert all(isinstance(c, str) for c in split.captions)


def test_default_spec_sizes() -> None:
    data = generate_embedded(EmbeddedSpec())
    assert (data.train.n_images, data.val.n_images, data.test.n_images) == (1000, 200, 500)
    assert (data.train.n_captions, data.val.n_captions, data.test.n_captions) == (5000, 1000, 2500)
    assert data.train.resolution == 32


@pytest.mark.parametrize("resolution", [16, 48, 64])
def test_other_resolutions(resolution: int) -> None:
    spec = EmbeddedSpec(n_train_images=3, n_val_images=2, n_test_images=2, resolution=resolution)
    data = generate_embedded(spec)
    assert tuple(data.train.images.shape) == (3, 3, resolution, resolution)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train_images": 0},
        {"n_val_images": -1},
        {"n_test_images": 0},
        {"resolution": 8},
        {"captions_per_image": 0},
        {"captions_per_image": emb.MAX_CAPTIONS_PER_IMAGE + 1},
        {"seed": -1},
        {"n_train_images": 10.5},
        {"resolution": True},
    ],
)
def test_invalid_spec_raises(kwargs) -> None:
    with pytest.raises(ValueError):
        EmbeddedSpec(**kwargs)


def test_captions_nonempty_and_distinct_within_image(small: Dataset) -> None:
    k = SMALL.captions_per_image
    for split in (small.train, small.val, small.test):
        for i in range(split.n_images):
            caps = split.captions[i * k : (i + 1) * k]
            assert len(set(caps)) == k, caps
            for c in caps:
                assert c.strip() == c and c and "  " not in c


def test_max_captions_per_image_come_from_distinct_families() -> None:
    spec = EmbeddedSpec(
        n_train_images=1, n_val_images=1, n_test_images=150, captions_per_image=emb.MAX_CAPTIONS_PER_IMAGE
    )
    split, scenes, families = emb._generate_split(spec, "test")
    k = spec.captions_per_image
    assert any(len(s.objects) == 1 for s in scenes)
    for i, fams in enumerate(families):
        assert len(set(fams)) == k
        assert len(set(split.captions[i * k : (i + 1) * k])) == k


# ---------------------------------------------------------------------------- truth


def matching(scene, np_words: list[str]) -> list:
    """Objects that fit every attribute word of a noun phrase."""
    found = []
    for obj in scene.objects:
        ok = True
        for w in np_words:
            if w in COLOUR_WORDS and obj.colour != w:
                ok = False
            if w in SHAPE_WORDS and obj.shape != SHAPE_WORDS[w]:
                ok = False
            if w in TEXTURE_WORDS and obj.texture != w:
                ok = False
            if w in SIZE_WORDS and obj.size != SIZE_WORDS[w]:
                ok = False
        if ok:
            found.append(obj)
    return found


def region_of(obj) -> str:
    col = ["left", "", "right"][min(int(obj.cx * 3), 2)]
    row = ["top", "", "bottom"][min(int(obj.cy * 3), 2)]
    return f"{row} {col}".strip() or "center"


RELATIONS = {
    " to the left of ": lambda a, b: b.cx - a.cx > 0.1,
    " to the right of ": lambda a, b: a.cx - b.cx > 0.1,
    " above ": lambda a, b: b.cy - a.cy > 0.1,
    " below ": lambda a, b: a.cy - b.cy > 0.1,
    " bigger than ": lambda a, b: a.radius > b.radius,
    " larger than ": lambda a, b: a.radius > b.radius,
    " smaller than ": lambda a, b: a.radius < b.radius,
}
REGION_PHRASES = sorted(
    ((phrase, region) for region, phrases in emb.REGION_PHRASES.items() for phrase in phrases),
    key=lambda pr: -len(pr[0]),
)


def check_caption(caption: str, scene) -> None:
    ws = words(caption)
    colours = {o.colour for o in scene.objects}
    shapes = {o.shape for o in scene.objects}
    n = len(scene.objects)
    # every attribute word belongs to some object of the scene
    for w in ws:
        if w in COLOUR_WORDS:
            assert w in colours, (caption, scene)
        if w in SHAPE_WORDS:
            assert SHAPE_WORDS[w] in shapes, (caption, scene)
        if w in TEXTURE_WORDS:
            assert w in {o.texture for o in scene.objects}, (caption, scene)
        if w in SIZE_WORDS:
            assert SIZE_WORDS[w] in {o.size for o in scene.objects}, (caption, scene)
    # the background, when named, is the scene's
    if "background" in ws:
        assert re.search(rf"\ban? {scene.background} background\b", caption), (caption, scene)
    # counts of all objects
    m = re.match(rf"^(?:an? \w+(?: \w+)? background with )?(a single|two|three) (?:{NOUNS})\b", caption)
    if m:
        assert {"a single": 1, **NUMBERS}[m.group(1)] == n, (caption, scene)
    # counts of an attribute value: "two red shapes", "a blue one" is not counted, "three ... ones"
    for num, value in re.findall(rf"\b(one|two|three) (\w+) (?:{NOUNS})\b", caption):
        if value in COLOUR_WORDS or value in TEXTURE_WORDS:
            attr = "colour" if value in COLOUR_WORDS else "texture"
            assert sum(getattr(o, attr) == value for o in scene.objects) == NUMBERS[num], (caption, scene)
    for num, value in re.findall(r"\b(one|two|three) of the \w+ (?:is|are) (\w+)", caption):
        assert sum(o.texture == value for o in scene.objects) == NUMBERS[num], (caption, scene)
    m = re.match(r"^(?:all the|all three|both) \w+ are (\w+)$", caption)
    if m and caption.startswith("both"):
        assert n == 2, (caption, scene)
    if m:
        assert all(m.group(1) in (o.colour, o.texture) for o in scene.objects), (caption, scene)
    for num, plural in re.findall(r"\b(two|three) (\w+)\b", caption):
        if plural in SHAPE_WORDS and plural not in emb.SHAPES:
            assert sum(o.shape == SHAPE_WORDS[plural] for o in scene.objects) == NUMBERS[num], (caption, scene)
    if re.match(r"^(a lone|only one|just|nothing but|just one) ", caption) or "and nothing else" in caption:
        assert n == 1, (caption, scene)
    # "from left to right" lists objects in x order
    if caption.startswith("from left to right: "):
        listed = [words(p) for p in re.split(r", | and ", caption[len("from left to right: ") :])]
        xs = [o.cx for o in sorted(scene.objects, key=lambda o: o.cx)]
        assert len(listed) == n
        for part, obj in zip(listed, sorted(scene.objects, key=lambda o: o.cx)):
            assert obj in matching(scene, part), (caption, scene)
        assert all(b - a > 0.1 for a, b in zip(xs, xs[1:]))
    # relations between two objects, computed from positions and sizes
    for phrase, holds in RELATIONS.items():
        if phrase not in caption:
            continue
        left, right = caption.split(phrase)
        definite = left.startswith("the ")
        left_words, right_words = words(left), words(right)
        cand_a, cand_b = matching(scene, left_words), matching(scene, right_words)
        if definite:
            assert len(cand_a) == 1 and len(cand_b) == 1, (caption, scene)
        assert any(a is not b and holds(a, b) for a in cand_a for b in cand_b), (caption, scene)
    # a position phrase: some object fits the description and sits in that region
    for phrase, region in REGION_PHRASES:
        if re.search(rf"\b{phrase}\b", caption):
            rest = words(caption.replace(phrase, " "))
            assert any(region_of(o) == region for o in matching(scene, rest)), (caption, scene)
            break


def test_captions_are_true(test_split_500) -> None:
    split, scenes, _ = test_split_500
    k = split.n_captions // split.n_images
    for i, scene in enumerate(scenes):
        for caption in split.captions[i * k : (i + 1) * k]:
            check_caption(caption, scene)


def test_all_families_true_with_max_captions() -> None:
    spec = EmbeddedSpec(
        n_train_images=200, n_val_images=1, n_test_images=1, captions_per_image=emb.MAX_CAPTIONS_PER_IMAGE, seed=7
    )
    split, scenes, _ = emb._generate_split(spec, "train")
    k = spec.captions_per_image
    for i, scene in enumerate(scenes):
        for caption in split.captions[i * k : (i + 1) * k]:
            check_caption(caption, scene)


def test_relation_checker_catches_a_false_caption(test_split_500) -> None:
    _, scenes, _ = test_split_500
    scene = next(s for s in scenes if len(s.objects) == 2 and abs(s.objects[0].cx - s.objects[1].cx) > 0.2)
    a, b = sorted(scene.objects, key=lambda o: o.cx)
    if (a.colour, a.shape) == (b.colour, b.shape):
        pytest.skip("identical descriptions")
    check_caption(f"a {a.colour} {a.shape} to the left of a {b.colour} {b.shape}", scene)
    with pytest.raises(AssertionError):
        check_caption(f"a {b.colour} {b.shape} to the left of a {a.colour} {a.shape}", scene)


def test_scenes_match_split_and_layout(small: Dataset) -> None:
    scenes = emb._split_scenes(SMALL, "train")
    assert len(scenes) == SMALL.n_train_images
    for scene in scenes:
        assert 1 <= len(scene.objects) <= 3
        for o in scene.objects:
            assert o.radius <= o.cx <= 1 - o.radius and o.radius <= o.cy <= 1 - o.radius
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) >= emb.MIN_SEPARATION * (a.radius + b.radius) - 1e-9


def test_objects_are_visible(small: Dataset) -> None:
    """Each object shows pixels close to its named colour inside its bounding box."""
    scenes = emb._split_scenes(SMALL, "test")
    images = small.test.images.numpy().astype(np.float64)
    res = SMALL.resolution
    for image, scene in zip(images, scenes):
        for obj in scene.objects:
            x0, x1 = int((obj.cx - obj.radius) * res), int(np.ceil((obj.cx + obj.radius) * res))
            y0, y1 = int((obj.cy - obj.radius) * res), int(np.ceil((obj.cy + obj.radius) * res))
            patch = image[:, y0:y1, x0:x1].reshape(3, -1).T
            named = np.asarray(emb.COLOURS[obj.colour], dtype=np.float64)
            close = np.linalg.norm(patch - named, axis=1) < 45
            assert close.sum() >= 4, (obj, close.sum())


def test_background_is_not_flat(small: Dataset) -> None:
    images = small.test.images.float()
    # per-image pixel noise/gradient: a corner patch is never a single value
    assert all(images[i, :, :4, :4].std() > 0.5 for i in range(images.shape[0]))


# ---------------------------------------------------------------------------- diversity


def test_caption_vocabulary_is_diverse(test_split_500) -> None:
    split, scenes, families = test_split_500
    distinct = set(split.captions)
    assert len(distinct) >= 3 * split.n_images
    assert Counter(split.captions).most_common(1)[0][1] <= 0.01 * split.n_captions
    vocab = {w for c in split.captions for w in words(c)}
    assert COLOUR_WORDS <= vocab and set(emb.SHAPES) <= vocab and TEXTURE_WORDS <= vocab
    assert {"small", "medium", "large", "left", "right", "above", "below", "bigger", "smaller"} <= vocab
    # scenes cover every attribute value; relations are common
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(emb.SHAPES)
    assert {o.colour for o in objs} == COLOUR_WORDS
    assert {o.texture for o in objs} == TEXTURE_WORDS
    assert {o.size for o in objs} == set(emb.SIZES)
    assert {o.region for o in objs} == set(emb.REGION_PHRASES)
    assert {s.background for s in scenes} == set(emb.BACKGROUNDS)
    fam_counts = Counter(f for fs in families for f in fs)
    assert set(fam_counts) == {f.name for f in emb.CAPTION_FAMILIES}
    relational = sum(fam_counts[f] for f in ("left_right", "above_below", "bigger_smaller"))
    assert relational >= 0.2 * split.n_captions


# ---------------------------------------------------------------------------- the pixel cache


def test_cached_pixels_give_the_generated_dataset(small: Dataset, tmp_path, monkeypatch) -> None:
    """Rendered once per cache directory (bench.data.embedded_cache): the first load writes the
    pixels, a later one maps them and renders nothing; both equal the generator's dataset."""
    from bench.data import embedded_cache

    first = embedded_cache.load_embedded(SMALL, tmp_path)
    (pixels,) = (tmp_path / "images").glob("embedded-32px-*.u8")
    assert pixels.stat().st_size == sum(small.split(s).images.numel() for s in emb.SPLITS)
    monkeypatch.setattr(emb, "_render_scenes", lambda *a, **k: pytest.fail("rendered again"))
    monkeypatch.setattr(embedded_cache, "generate_embedded", lambda *a, **k: pytest.fail("generated again"))
    monkeypatch.setattr(embedded_cache, "embedded_captions", lambda *a, **k: pytest.fail("captions drawn again"))
    second = embedded_cache.load_embedded(SMALL, tmp_path)
    for data in (first, second):
        assert data.name == small.name and data.content_key == small.content_key
        for name in emb.SPLITS:
            assert_same_split(data.split(name), small.split(name))


def test_pixel_cache_is_per_spec_and_repairs_itself(small: Dataset, tmp_path) -> None:
    from bench.data.embedded_cache import load_embedded

    load_embedded(SMALL, tmp_path)
    other = load_embedded(replace(SMALL, seed=4), tmp_path)  # another spec: its own entry
    assert len(list((tmp_path / "images").glob("*.u8"))) == 2
    assert not torch.equal(other.train.images, small.train.images)
    for data in (tmp_path / "images").glob("*.u8"):
        data.write_bytes(data.read_bytes()[:-5])  # truncated: reported, removed, rendered again
    with pytest.warns(UserWarning, match="image cache"):
        again = load_embedded(SMALL, tmp_path)
    assert_same_split(again.train, small.train)


def test_an_entry_without_captions_gets_them_drawn_once_and_stored(small: Dataset, tmp_path, monkeypatch) -> None:
    """An entry written before captions were stored: the next load draws them (equal to the
    generator's) and adds them to its description, so the load after draws nothing; captions of
    the wrong count are reported and replaced. ``cached_captions`` reads them without drawing."""
    import json

    from bench.data import embedded_cache

    embedded_cache.load_embedded(SMALL, tmp_path)
    (meta,) = (tmp_path / "images").glob("embedded-32px-*.json")
    described = json.loads(meta.read_text())
    assert [len(described["captions"][s]) for s in emb.SPLITS] == [small.split(s).n_captions for s in emb.SPLITS]
    del described["captions"]
    meta.write_text(json.dumps(described))  # the layout of an older entry

    drawn = []
    real = embedded_cache.embedded_captions
    monkeypatch.setattr(embedded_cache, "embedded_captions", lambda *a: drawn.append(a[1]) or real(*a))
    assert embedded_cache.cached_captions(SMALL, tmp_path) == {s: small.split(s).captions for s in emb.SPLITS}
    assert drawn == list(emb.SPLITS) and "captions" not in json.loads(meta.read_text())  # a listing writes nothing
    drawn.clear()
    again = embedded_cache.load_embedded(SMALL, tmp_path)
    assert drawn == list(emb.SPLITS)
    for name in emb.SPLITS:
        assert_same_split(again.split(name), small.split(name))
    drawn.clear()
    assert embedded_cache.cached_captions(SMALL, tmp_path)["train"] == small.train.captions
    embedded_cache.load_embedded(SMALL, tmp_path)
    assert drawn == []

    described = json.loads(meta.read_text())
    described["captions"]["val"] = described["captions"]["val"][:-1]
    meta.write_text(json.dumps(described))
    with pytest.warns(UserWarning, match="wrong count"):
        repaired = embedded_cache.load_embedded(SMALL, tmp_path)
    assert repaired.val.captions == small.val.captions
    assert tuple(json.loads(meta.read_text())["captions"]["val"]) == small.val.captions


def test_captions_that_are_not_strings_make_the_entry_unusable(tmp_path) -> None:
    import json

    from bench.data.embedded_cache import load_embedded

    load_embedded(SMALL, tmp_path)
    (meta,) = (tmp_path / "images").glob("embedded-32px-*.json")
    described = json.loads(meta.read_text())
    described["captions"]["test"][0] = 7
    meta.write_text(json.dumps(described))
    with pytest.warns(UserWarning, match=r"image cache .*captions"):
        load_embedded(SMALL, tmp_path)
    assert isinstance(json.loads(meta.read_text())["captions"]["test"][0], str)  # rebuilt
