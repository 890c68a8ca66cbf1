"""The real-data path without real data: the toy Karpathy set and text model of
``python -m bench.data.toy``, the smoke config that runs the paper grid's methods on it, and the
checks that a real-data run makes before it decodes an image."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bench.commands.cli import main
from bench.data import toy
from bench.data.karpathy import check_karpathy, parse_split
from bench.data.toy import ToySpec, write_toy

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "flickr30k_smoke.yaml"
SMALL = ToySpec(n_train_images=4, n_val_images=2, n_test_images=2)


@pytest.fixture(scope="module")
def small_toy(tmp_path_factory) -> Path:
    return write_toy(tmp_path_factory.mktemp("toy") / "toy", SMALL)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_toy_files_follow_the_karpathy_schema(small_toy):
    ann = small_toy / "annotations"
    train = json.loads((ann / "toy_train.json").read_text())
    assert len(train) == 4 * 5 and all(set(e) == {"image", "caption", "image_id"} for e in train)
    assert all(isinstance(e["caption"], str) and e["image"] == f"toy-images/{e['image_id']}.jpg" for e in train)
    for split in ("val", "test"):
        entries = json.loads((ann / f"toy_{split}.json").read_text())
        assert len(entries) == 2 and all(set(e) == {"image", "caption"} for e in entries)
        assert all(isinstance(e["caption"], list) and len(e["caption"]) == 5 for e in entries)
    # The loader's own phases 1 and 2 accept it: parsed, every image file there, splits disjoint.
    checked = check_karpathy(toy_spec(small_toy))
    assert [len(p.image_paths) for p in checked.parsed] == [4, 2, 2]
    assert parse_split(ann / "toy_train.json", "train").captions == tuple(e["caption"] for e in train)
    assert json.loads((small_toy / toy.MARKER).read_text())["n_train_images"] == 4


def toy_spec(root: Path, resolution: int = 32):
    from bench.data.karpathy import KarpathySpec

    ann = root / "annotations"
    return KarpathySpec(name="toy", train_json=ann / "toy_train.json", val_json=ann / "toy_val.json",
                        test_json=ann / "toy_test.json", image_root=root, resolution=resolution)


def test_toy_images_decode_with_the_shorter_side_cropped(small_toy, tmp_path):
    from PIL import Image

    from bench.data.karpathy import load_karpathy

    sizes = [Image.open(small_toy / "toy-images" / f"{1000 + i}.jpg").size for i in range(3)]
    assert sizes == [(64, 64), (64 + 2 * toy.PAD, 64), (64, 64 + 2 * toy.PAD)]  # square, wide, tall
    data = load_karpathy(toy_spec(small_toy), tmp_path / "cache")
    assert tuple(data.train.images.shape) == (4, 3, 32, 32) and data.train.n_captions == 20


def test_toy_text_model_loads_offline_and_knows_every_word(small_toy):
    from bench.data.text_encoder import TextEncoder, TextEncoderConfig

    captions = [c for s in ("train", "val", "test")
                for c in parse_split(small_toy / "annotations" / f"toy_{s}.json", s).captions]
    encoder = TextEncoder(TextEncoderConfig(path=str(small_toy / "bert-tiny"), pooling="cls", normalize=False))
    emb = encoder.encode(captions)
    assert emb.shape == (len(captions), 32)
    ids = encoder._tokenizer(captions)["input_ids"]
    assert encoder._tokenizer.unk_token_id not in {t for row in ids for t in row}
    assert len({tuple(row) for row in emb.tolist()}) == len(set(captions))  # a vector per distinct caption


def test_toy_is_deterministic_and_replaces_only_its_own_output(small_toy, tmp_path, capsys):
    again = write_toy(tmp_path / "again", SMALL)
    assert _tree(again) == _tree(small_toy)  # the same bytes for the same arguments
    assert toy.main([str(again), "--train-images", "3", "--val-images", "2", "--test-images", "2"]) == 0
    assert json.loads((again / toy.MARKER).read_text())["n_train_images"] == 3  # an earlier toy set is replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert toy.main([str(other)]) == 2
    assert _one_error_line(capsys).startswith(f"error: {other} is not empty and holds no TOY.json")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert toy.main([str(tmp_path / "bad"), "--train-images", "0"]) == 2
    assert "n_train_images must be positive" in _one_error_line(capsys)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- checks before decoding


def _refuse_decoding(monkeypatch):
    import bench.data.karpathy
    from bench.data.text_encoder import TextEncoder

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded (or the text model loaded) before the config was checked")

    monkeypatch.setattr(bench.data.karpathy, "decode_images", refuse)
    monkeypatch.setattr(TextEncoder, "_load", refuse)


def _smoke_args(root: Path, tmp_path: Path, *sets: str) -> list[str]:
    args = ["--config", str(SMOKE), "--no-progress"]
    for s in (f"datasets.0.karpathy.image_root={root}", f"datasets.0.text_encoder.path={root / 'bert-tiny'}",
              *(f"datasets.0.karpathy.{split}_json={root / 'annotations' / f'toy_{split}.json'}"
                for split in ("train", "val", "test")),
              f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}", *sets):
        args += ["--set", s]
    return args


def test_a_budget_too_large_fails_before_any_image_is_decoded(small_toy, tmp_path, monkeypatch, capsys):
    _refuse_decoding(monkeypatch)
    assert main(_smoke_args(small_toy, tmp_path, "budgets=[10, 999]")) == 2
    assert _one_error_line(capsys) == "error: budgets: budget 999 is larger than the training set of toy (20 pairs)"
    assert not (tmp_path / "cache" / "images").exists() and not (tmp_path / "results").exists()


def test_a_missing_text_model_fails_before_any_image_is_decoded(small_toy, tmp_path, monkeypatch, capsys):
    _refuse_decoding(monkeypatch)
    assert main(_smoke_args(small_toy, tmp_path, "budgets=[10]",
                            f"datasets.0.text_encoder.path={tmp_path / 'no-model'}")) == 2
    line = _one_error_line(capsys)
    assert "text_encoder.path" in line and "no-model" in line and "no config.json" in line


# ----------------------------------------------------------------------------- the smoke config


@pytest.mark.timeout(600)
def test_smoke_config_runs_every_paper_method_from_the_documented_commands(tmp_path, monkeypatch, capsys):
    """``python -m bench.data.toy`` then ``python run_bench.py --config configs/flickr30k_smoke.yaml``,
    run from a fresh directory with no flag: every method of the paper grid at every budget
    and the full row finish, on Karpathy files and a local BERT directory."""
    from bench.grid.spec import load_grid

    monkeypatch.chdir(tmp_path)
    assert toy.main([]) == 0
    assert main(["--config", str(SMOKE), "--no-progress"]) == 0
    smoke, paper = load_grid(SMOKE), load_grid(REPO / "configs" / "flickr30k.yaml")
    assert [m.key for m in smoke.methods] == [m.key for m in paper.methods]
    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "results" / "flickr30k_smoke" / "records").glob("*.json")}
    expected = {"toy__full.json"} | {f"toy__{m.key}__b{b}__s0.json" for m in smoke.methods for b in smoke.budgets}
    assert set(records) == expected
    assert all(r["status"] == "ok" for r in records.values())
    assert records["toy__full.json"]["n_pairs"] == 200
    # The budget_params of the 200-pair budget, kept at 20 pairs, reached their cells.
    assert records["toy__lors__b20__s0.json"]["method_params"]["max_start_epoch"] == 3
    assert records["toy__lors__b10__s0.json"]["method_params"]["max_start_epoch"] == 2


def test_the_documented_scale_down_command_loads(tmp_path, monkeypatch):
    """docs/real_data.md's example of cutting the paper grid down is a grid that loads."""
    import re
    import shlex

    from bench.grid.spec import load_grid

    text = (REPO / "docs" / "real_data.md").read_text()
    (command,) = re.findall(r"^python run_bench.py --config configs/flickr30k.yaml .*?(?<!\\)$", text, re.M | re.S)
    words = shlex.split(command.replace("\\\n", " "))
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="dropped the entries of budgets no longer run"):
        grid = load_grid(REPO / "configs" / "flickr30k.yaml", sets)
    assert grid.budgets == (100,) and grid.experts.epochs == 6 and len(grid.methods) == 10
