"""Karpathy-format loading: grouping, decoding geometry, strict validation, the image cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import images as images_mod
from bench.data import karpathy
from bench.data.images import ImageDecodeError, decode_image, decode_images
from bench.data.karpathy import (
    AnnotationError,
    KarpathySpec,
    load_karpathy,
    parse_split,
)

COLORS = {
    "a.png": (255, 0, 0),
    "b.jpg": (0, 255, 0),
    "sub/c.png": (0, 0, 255),
    "d.png": (255, 255, 0),
    "e.png": (0, 255, 255),
    "f.png": (255, 0, 255),
}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def make_dataset(tmp: Path, resolution: int = 8) -> KarpathySpec:
    root = tmp / "img"
    for rel, color in COLORS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 10), color).save(root / rel)
    train = [
        {"image": "a.png", "caption": " a red thing ", "image_id": "1"},
        {"image": "b.jpg", "caption": "a green thing", "image_id": 2},
        {"image": "a.png", "caption": "red again", "image_id": "1"},
        {"image": "sub/c.png", "caption": "blue", "image_id": "3"},
        {"image": "b.jpg", "caption": "green again"},
    ]
    val = [{"image": "d.png", "caption": ["yellow 1", "yellow 2", "yellow 3", "yellow 4", "yellow 5"]}]
    test = [
        {"image": "e.png", "caption": ["cyan 1", "cyan 2", "cyan 3", "cyan 4", "cyan 5"]},
        {"image": "f.png", "caption": ["magenta 1", "magenta 2", "magenta 3", "magenta 4", "magenta 5", "m 6"]},
    ]
    ann = tmp / "ann"
    ann.mkdir(exist_ok=True)
    for name, obj in (("ds_train.json", train), ("ds_val.json", val), ("ds_test.json", test)):
        _write_json(ann / name, obj)
    return KarpathySpec("tiny", ann / "ds_train.json", ann / "ds_val.json", ann / "ds_test.json", root, resolution)


@pytest.fixture
def spec(tmp_path: Path) -> KarpathySpec:
    return make_dataset(tmp_path)


def _mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory mapping holds ``tensor``'s data (Linux /proc), or None."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            return fields[5] if len(fields) > 5 else None
    return None


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


# --------------------------------------------------------------------------------------------
# happy path


def test_grouping_and_shapes(spec: KarpathySpec, tmp_path: Path) -> None:
    ds = load_karpathy(spec, tmp_path / "cache")
    tr = ds.train
    assert tr.image_names == ("a.png", "b.jpg", "sub/c.png")
    assert tr.captions == ("a red thing", "a green thing", "red again", "blue", "green again")
    assert tr.caption_image.tolist() == [0, 1, 0, 2, 1]
    assert tr.caption_image.dtype == torch.int64
    assert tr.images.dtype == torch.uint8 and tuple(tr.images.shape) == (3, 3, 8, 8)
    # colours survive decoding (PNG exactly, JPEG approximately)
    assert tr.images[0, :, 4, 4].tolist() == [255, 0, 0]
    assert tr.images[2, :, 4, 4].tolist() == [0, 0, 255]
    assert abs(int(tr.images[1, 1, 4, 4]) - 255) < 8
    assert ds.val.n_images == 1 and ds.val.n_captions == 5
    assert ds.test.n_images == 2 and ds.test.n_captions == 11
    assert ds.test.caption_image.tolist() == [0] * 5 + [1] * 6
    assert ds.test.resolution == 8
    assert len(ds.content_key) == 16


def test_parse_split_is_pure(spec: KarpathySpec) -> None:
    parsed = parse_split(spec.train_json, "train")
    assert parsed.image_paths == ("a.png", "b.jpg", "sub/c.png")
    assert parsed.first_entry == (0, 1, 3)
    assert parsed.caption_image == (0, 1, 0, 2, 1)


def test_resize_center_crop_keeps_center(tmp_path: Path) -> None:
    # 40x20: left half red, right half blue; the centre 20x20 crop spans both halves evenly.
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    path = tmp_path / "halves.png"
    img.save(path)
    arr = decode_image(path, 10)
    assert arr.shape == (3, 10, 10) and arr.dtype == np.uint8
    assert arr[:, 5, 0].tolist() == [255, 0, 0]
    assert arr[:, 5, 9].tolist() == [0, 0, 255]
    left, right = arr[:, :, :5], arr[:, :, 5:]
    assert left[0].mean() > 200 and left[2].mean() < 60
    assert right[2].mean() > 200 and right[0].mean() < 60
    # a tall image crops top/bottom; upscaling a small image also works
    tall = Image.new("RGB", (6, 18), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 6, 6, 12))
    tall.save(tmp_path / "tall.png")
    out = decode_image(tmp_path / "tall.png", 12)
    assert out.shape == (3, 12, 12) and out[:, 6, 6].tolist() == [255, 255, 255]


def test_decode_images_parallel_and_errors(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (9, 7), (i * 40, 0, 0)).save(p)
        paths.append(p)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = decode_images(paths, 4, workers=2)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (5, 3, 4, 4)
    assert out[:, 0, 0, 0].tolist() == [0, 40, 80, 120, 160]
    with pytest.raises(ImageDecodeError, match="bad.png"):
        decode_images(paths + [bad], 4, workers=2)
    seen: list[int] = []
    out = decode_images([bad] + paths, 4, workers=2, on_error=lambda i, p, e: seen.append(i))
    assert seen == [0] and out[0].sum() == 0 and out[1:, 0, 0, 0].tolist() == [0, 40, 80, 120, 160]
    assert tuple(decode_images([], 4).shape) == (0, 3, 4, 4)


# --------------------------------------------------------------------------------------------
# the cache


def test_cache_hit_decodes_nothing(spec: KarpathySpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = load_karpathy(spec, cache)
    files = cache_files(cache)
    assert [f.name for f in files] == [f"tiny-8px-{first.content_key}.json", f"tiny-8px-{first.content_key}.u8"]
    # The pixels are a memory map of the cache file, not a copy in memory.
    assert all(_mapped_file(first.split(s).images) == str(files[1]) for s in ("train", "val", "test"))

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(images_mod, "decode_image", boom)
    monkeypatch.setattr(karpathy, "decode_images", boom)
    second = load_karpathy(spec, cache)
    assert second.content_key == first.content_key
    for s in ("train", "val", "test"):
        assert torch.equal(first.split(s).images, second.split(s).images)
        assert first.split(s).captions == second.split(s).captions
    assert cache_files(cache) == files


def test_cache_misses_on_changes(spec: KarpathySpec, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    key = load_karpathy(spec, cache).content_key
    # another resolution
    spec16 = KarpathySpec(spec.name, spec.train_json, spec.val_json, spec.test_json, spec.image_root, 16)
    ds16 = load_karpathy(spec16, cache)
    assert ds16.content_key != key and ds16.train.resolution == 16
    # a changed annotation (same images)
    val = json.loads(Path(spec.val_json).read_text())
    val[0]["caption"][0] = "yellow one"
    _write_json(Path(spec.val_json), val)
    ds = load_karpathy(spec, cache)
    assert ds.content_key not in (key, ds16.content_key) and ds.val.captions[0] == "yellow one"
    # an image rewritten (new size and mtime)
    Image.new("RGB", (30, 30), (1, 2, 3)).save(Path(spec.image_root) / "d.png")
    ds2 = load_karpathy(spec, cache)
    assert ds2.content_key != ds.content_key and ds2.val.images[0, :, 0, 0].tolist() == [1, 2, 3]
    assert len(cache_files(cache)) == 8  # four entries of two files


@pytest.mark.parametrize("damage", ["truncate pixels", "garbage description"])
def test_unreadable_cache_is_rebuilt(spec: KarpathySpec, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    ds = load_karpathy(spec, cache)
    expected = ds.train.images.clone()
    files = cache_files(cache)
    meta, pixels = files
    if damage == "truncate pixels":
        pixels.write_bytes(pixels.read_bytes()[:100])
    else:
        meta.write_text("{not json")
    with pytest.warns(UserWarning, match=rf"image cache {meta}.*unusable.*rebuilding"):
        again = load_karpathy(spec, cache)
    assert torch.equal(again.train.images, expected)
    assert cache_files(cache) == files


def test_corrupt_image_leaves_no_cache_file(spec: KarpathySpec, tmp_path: Path) -> None:
    bad = Path(spec.image_root) / "sub" / "c.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    with pytest.raises(OSError) as pil:
        Image.open(bad).convert("RGB")
    cache = tmp_path / "cache"
    with pytest.raises(AnnotationError) as info:
        load_karpathy(spec, cache)
    msg = str(info.value)
    assert "ds_train.json" in msg and "entry 3" in msg and "sub/c.png" in msg and "0-based" in msg
    assert "cannot decode" in msg and str(pil.value) in msg  # PIL's own reason
    assert cache_files(cache) == []
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_truncated_jpeg_is_an_error(spec: KarpathySpec, tmp_path: Path) -> None:
    path = Path(spec.image_root) / "b.jpg"
    Image.new("RGB", (64, 64), (0, 255, 0)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(AnnotationError, match=r"ds_train\.json, entry 1, image 'b\.jpg': cannot decode"):
        load_karpathy(spec, tmp_path / "cache")
    assert cache_files(tmp_path / "cache") == []


# --------------------------------------------------------------------------------------------
# validation errors: each names the file, the entry and (where relevant) the image


def _set(spec: KarpathySpec, split: str, obj: Any, raw: str | None = None) -> Path:
    path = Path(spec.annotation(split))
    if raw is not None:
        path.write_text(raw, encoding="utf-8")
    else:
        _write_json(path, obj)
    return path


def _train(spec: KarpathySpec) -> list[dict[str, Any]]:
    return json.loads(Path(spec.train_json).read_text())


def _val(spec: KarpathySpec) -> list[dict[str, Any]]:
    return json.loads(Path(spec.val_json).read_text())


def _error(spec: KarpathySpec, tmp_path: Path) -> str:
    with pytest.raises(AnnotationError) as info:
        load_karpathy(spec, tmp_path / "cache")
    assert cache_files(tmp_path / "cache") == []  # nothing decoded or cached
    return str(info.value)


# (split, how to break the entries, expected fragments of the message)
ENTRY_CASES = {
    "entry not an object": ("train", lambda e: e.__setitem__(2, ["a.png", "x"]), ["entry 2", "expected an object"]),
    "missing image": ("train", lambda e: e[1].pop("image"), ["entry 1", "missing key 'image'"]),
    "missing caption": ("val", lambda e: e[0].pop("caption"), ["entry 0", "d.png", "missing key 'caption'"]),
    "image not a string": ("train", lambda e: e[3].__setitem__("image", 7), ["entry 3", "'image' must be a non-empty string"]),
    "image empty": ("train", lambda e: e[3].__setitem__("image", " "), ["entry 3", "'image' must be a non-empty string"]),
    "train caption not a string": (
        "train", lambda e: e[4].__setitem__("caption", ["x"]), ["entry 4", "b.jpg", "must be a string in a train file"]
    ),
    "train caption empty": ("train", lambda e: e[2].__setitem__("caption", "  \t"), ["entry 2", "a.png", "caption is empty"]),
    "bad image_id": ("train", lambda e: e[0].__setitem__("image_id", [1]), ["entry 0", "a.png", "'image_id'"]),
    "eval caption a string": ("val", lambda e: e[0].__setitem__("caption", "x"), ["entry 0", "d.png", "list of strings"]),
    "eval caption list empty": ("val", lambda e: e[0].__setitem__("caption", []), ["entry 0", "d.png", "caption list is empty"]),
    "eval caption item not str": (
        "val", lambda e: e[0]["caption"].__setitem__(2, None), ["entry 0", "d.png", "caption 2 of the list", "must be a string"]
    ),
    "eval caption item empty": (
        "val", lambda e: e[0]["caption"].__setitem__(3, " "), ["entry 0", "d.png", "caption 3 of the list (0-based) is empty"]
    ),
    "absolute path": ("train", lambda e: e[1].__setitem__("image", "/etc/passwd"), ["entry 1", "/etc/passwd", "relative"]),
    "escaping path": ("val", lambda e: e[0].__setitem__("image", "../img/d.png"), ["entry 0", "../img/d.png", "'..'"]),
    "eval duplicate": (
        "val", lambda e: e.append({"image": "./d.png", "caption": ["y"]}), ["entry 1", "d.png", "listed twice", "entry 0"]
    ),
    "NUL byte in a path": (  # issue 20, item 18: was "ValueError: embedded null byte" from stat
        "train", lambda e: e[1].__setitem__("image", "b\x00.jpg"), ["entry 1", "contains a control character"]
    ),
}


@pytest.mark.parametrize("case", sorted(ENTRY_CASES))
def test_entry_errors(spec: KarpathySpec, tmp_path: Path, case: str) -> None:
    split, breaker, fragments = ENTRY_CASES[case]
    entries = _train(spec) if split == "train" else _val(spec)
    breaker(entries)
    _set(spec, split, entries)
    msg = _error(spec, tmp_path)
    assert f"ds_{split}.json" in msg
    assert "0-based" in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ('[{"image": "d.png",\n "caption": ["x"],}]', ["invalid JSON", "line 2", "column"]),
        ('{"image": "d.png"}', ["top level must be a JSON list", "object"]),
        ("[]", ["list of entries is empty"]),
        ("[" * 200_000, ["invalid JSON", "nested too deeply"]),  # issue 20, item 18: was a RecursionError
    ],
)
def test_file_level_errors(spec: KarpathySpec, tmp_path: Path, raw: str, fragments: list[str]) -> None:
    _set(spec, "val", None, raw=raw)
    msg = _error(spec, tmp_path)
    assert "ds_val.json" in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_missing_annotation_file(spec: KarpathySpec, tmp_path: Path) -> None:
    Path(spec.test_json).unlink()
    msg = _error(spec, tmp_path)
    assert "ds_test.json" in msg and "not found" in msg


def test_image_in_two_splits(spec: KarpathySpec, tmp_path: Path) -> None:
    test = json.loads(Path(spec.test_json).read_text())
    test[1]["image"] = "sub/c.png"
    _set(spec, "test", test)
    msg = _error(spec, tmp_path)
    assert "ds_test.json, entry 1" in msg and "ds_train.json, entry 3" in msg and "sub/c.png" in msg


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dot-detour"])
def test_a_link_to_a_train_image_is_the_same_image(spec: KarpathySpec, tmp_path: Path, link: str) -> None:
    """Issue 20, item 7: a test image that is a link to (or another spelling of) a train image
    shares that image with the train split, whatever its path says."""
    root = Path(spec.image_root)
    (root / "e.png").unlink()
    if link == "symlink":
        (root / "e.png").symlink_to(root / "sub" / "c.png")
    elif link == "hardlink":
        (root / "e.png").hardlink_to(root / "sub" / "c.png")
    else:
        (root / "e.png").symlink_to(root / "sub" / "." / "c.png")
    msg = _error(spec, tmp_path)
    assert "ds_test.json, entry 0, image 'e.png': the same file as image 'sub/c.png' of another split" in msg
    assert "ds_train.json, entry 3" in msg
    # Two names for one file inside one split are allowed.
    (root / "e.png").unlink()
    (root / "e.png").symlink_to(root / "f.png")
    assert load_karpathy(spec, tmp_path / "cache").test.n_captions == 11


def test_missing_image_file(spec: KarpathySpec, tmp_path: Path) -> None:
    (Path(spec.image_root) / "e.png").unlink()
    msg = _error(spec, tmp_path)
    assert "ds_test.json, entry 0, image 'e.png'" in msg and "not found" in msg


def test_errors_are_collected_and_capped(spec: KarpathySpec, tmp_path: Path) -> None:
    entries = _train(spec) + [{"image": f"x{i}.png", "caption": ""} for i in range(15)]
    _set(spec, "train", entries)
    _set(spec, "val", None, raw="{}")
    msg = _error(spec, tmp_path)
    assert "16 dataset problems (6 more not shown)" in msg
    assert "ds_train.json, entry 5, image 'x0.png': caption is empty" in msg
    assert "entry 14" in msg and "entry 15," not in msg


def test_all_files_checked_before_decoding(spec: KarpathySpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(karpathy, "decode_images", lambda *a, **k: calls.append(a))
    (Path(spec.image_root) / "f.png").unlink()  # the very last image of the last file
    _error(spec, tmp_path)
    assert calls == []


def test_error_type_is_value_error() -> None:
    assert issubclass(AnnotationError, ValueError)
    err = AnnotationError(["x.json, entry 3: caption is empty"])
    assert str(err).startswith("x.json, entry 3: caption is empty")


# --------------------------------------------------------------------------------------------
# wide greyscale


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """Pillow opens a 16-bit greyscale PNG as mode I;16 and clips it at 255 in convert("RGB")
    (mid-grey came out white); decoding scales 0..65535 to 0..255 instead."""
    ramp = np.tile(np.array([0, 257 * 64, 0x8000, 257 * 200, 65535], dtype=np.uint16), (5, 1))
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I") and np.asarray(img).max() == 65535  # a real 16-bit file
    arr = decode_image(path, 5)
    assert arr[0, 2].tolist() == [0, 64, 128, 200, 255]  # the ramp, one row of the red channel
    assert (arr[0] == arr[1]).all() and (arr[1] == arr[2]).all()  # grey stays grey
    out = decode_images([path], 5)
    assert out[0, :, 2, 2].tolist() == [128, 128, 128]
