"""Caches heal themselves and are keyed by everything that shaped them: a corrupt file is
reported by name and rebuilt, the text encoder is part of every key, output files honour the
umask, temporary files of dead writers go away, and ``run_bench.py cache`` lists and prunes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bench.commands.cli import main
from bench.core.config import to_dict
from bench.core.io import (
    atomic_path,
    load_torch_or_none,
    remove_stale_temp_files,
    torch_save_atomic,
    write_text_atomic,
)
from bench.distill.experts import expert_key, train_expert
from bench.grid.cell import prepared
from bench.grid.runner import GridRun
from bench.protocol.proxy import load_or_compute_proxy, proxy_key
from tests.grid_helpers import tiny_grid

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return tiny_grid(tmp_path_factory.mktemp("caches"), experts={"n_experts": 1, "epochs": 1, "batch_size": 64},
                     datasets=[{"source": "embedded", "embedded": {
                         "n_train_images": 20, "n_val_images": 2, "n_test_images": 4, "resolution": 16}}])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:64])


def _rebuilt(path: Path, what: str, build):
    """Truncate ``path``, rebuild through ``build()``; the warning names the file."""
    _truncate(path)
    with pytest.warns(UserWarning, match=rf"{what} {path} is unusable .*removing it and rebuilding it"):
        out = build()
    assert path.is_file() and path.stat().st_size > 64
    return out


def test_corrupt_caption_embeddings_are_rebuilt(tmp_path):
    from bench.data.text_encoder import (
        TextEncoderConfig,
        cached_caption_embeddings,
        caption_cache_path,
        model_identity,
    )

    cfg, captions = TextEncoderConfig(), ["a red circle", "two blue squares", "a green star"]
    first = cached_caption_embeddings(cfg, captions, tmp_path, label="d-train")
    path = caption_cache_path(tmp_path, model_identity(cfg), captions, "d-train")
    again = _rebuilt(path, "caption embedding cache", lambda: cached_caption_embeddings(cfg, captions, tmp_path,
                                                                                         label="d-train"))
    assert torch.equal(again, first)
    torch_save_atomic(path, first[:2])  # readable, but not one row per caption
    with pytest.warns(UserWarning, match="2 rows for 3 captions"):
        assert torch.equal(cached_caption_embeddings(cfg, captions, tmp_path, label="d-train"), first)


def test_corrupt_proxy_is_recomputed(grid):
    data = prepared(grid, "embedded")
    recipe = (grid.proxy, grid.evaluation.full_train)
    first = load_or_compute_proxy(data, grid.model, *recipe, 0, CPU, grid.cache_dir)
    (path,) = (Path(grid.cache_dir) / "proxy").glob(f"embedded-{proxy_key(data, grid.model, *recipe, 0)}.pt")
    again = _rebuilt(path, "proxy cache", lambda: load_or_compute_proxy(data, grid.model, *recipe, 0, CPU, grid.cache_dir))
    assert (again.features == first.features).all()
    assert first.gallery is not None and (again.gallery.image_to_text == first.gallery.image_to_text).all()
    # Readable, but its gallery rows do not cover the pairs: rebuilt too.
    blob = torch.load(path, weights_only=False)
    blob["gallery"]["image_to_text"] = blob["gallery"]["image_to_text"][:, :5]
    torch_save_atomic(path, blob)
    with pytest.warns(UserWarning, match="gallery similarities are not"):
        rebuilt = load_or_compute_proxy(data, grid.model, *recipe, 0, CPU, grid.cache_dir)
    assert (rebuilt.gallery.image_to_text == first.gallery.image_to_text).all()
    blob["gallery"] = {"positive": blob["gallery"]["positive"]}
    torch_save_atomic(path, blob)
    with pytest.warns(UserWarning, match="its gallery is not a mapping of epochs, gallery"):
        load_or_compute_proxy(data, grid.model, *recipe, 0, CPU, grid.cache_dir)


def test_corrupt_expert_is_retrained(grid):
    data = prepared(grid, "embedded")
    base = grid.evaluation.full_train
    path = train_expert(data, grid.model, grid.experts, base, 0, grid.cache_dir, CPU)
    original = {k: v.clone() for k, v in load_file(str(path)).items()}  # not a view of the file
    _rebuilt(path, "expert trajectory", lambda: train_expert(data, grid.model, grid.experts, base, 0, grid.cache_dir, CPU))
    assert _same(load_file(str(path)), original)  # the same expert again (deterministic)
    # A complete file of another recipe in its place is not trusted either.
    other = replace(grid.experts, lr_image=0.05)
    stranger = train_expert(data, grid.model, other, base, 0, grid.cache_dir, CPU)
    path.write_bytes(stranger.read_bytes())
    with pytest.warns(UserWarning, match="another recipe"):
        train_expert(data, grid.model, grid.experts, base, 0, grid.cache_dir, CPU)
    assert _same(load_file(str(path)), original)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_load_torch_or_none_for_checkpoints(tmp_path):
    path = tmp_path / "distill" / "ckpt.pt"
    assert load_torch_or_none(path, "distillation checkpoint") is None  # nothing yet
    torch_save_atomic(path, {"key": "k", "state": {"iteration": 3}})
    assert load_torch_or_none(path, "distillation checkpoint")["state"]["iteration"] == 3
    _truncate(path)
    with pytest.warns(UserWarning, match=rf"distillation checkpoint {path} is unusable"):
        assert load_torch_or_none(path, "distillation checkpoint") is None
    assert not path.exists()  # removed: the next run starts over instead of failing again
    torch_save_atomic(path, [1, 2])
    with pytest.warns(UserWarning, match="not a dict"):
        assert load_torch_or_none(path, "distillation checkpoint",
                                  check=lambda obj: None if isinstance(obj, dict) else "not a dict") is None


def test_the_text_encoder_is_part_of_every_cache_key(grid):
    """Same images and captions, same embedding width, another encoder setting: another dataset
    key, so experts, proxies and checkpoints made from the old embeddings are never reused."""
    from bench.data.datasets import PreparedDataset, dataset_key
    from bench.data.text_encoder import model_identity

    data = prepared(grid, "embedded")
    encoder = grid.datasets[0].text_encoder
    assert data.encoder_key == model_identity(encoder)
    assert data.key == dataset_key(data.dataset.content_key, data.encoder_key)
    others = [replace(encoder, pooling="cls"), replace(encoder, normalize=False), replace(encoder, max_length=32)]
    identities = {model_identity(e) for e in [encoder, *others]}
    assert len(identities) == 4 and model_identity(replace(encoder, batch_size=7)) == data.encoder_key
    base = grid.evaluation.full_train
    for identity in identities - {data.encoder_key}:
        other = PreparedDataset(data.dataset, data.text_emb, identity)
        assert other.key != data.key
        assert expert_key(other, grid.model, grid.experts, base) != expert_key(data, grid.model, grid.experts, base)
        assert proxy_key(other, grid.model, grid.proxy, base, 0) != proxy_key(data, grid.model, grid.proxy, base, 0)
    # Without an encoder identity the key fingerprints the embeddings themselves.
    bare = PreparedDataset(data.dataset, data.text_emb)
    shifted = PreparedDataset(data.dataset, {k: v + 1e-3 for k, v in data.text_emb.items()})
    assert bare.key != shifted.key and bare.key != data.key


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    from safetensors.torch import save_file

    from bench.core.io import write_atomic

    old = os.umask(umask)
    try:
        text = write_text_atomic(tmp_path / "a" / "record.json", "{}")
        blob = torch_save_atomic(tmp_path / "a" / "set.pt", {"x": 1})
        # Issue 20, item 21: safetensors writes a file of its own (mode 0600), as expert files are.
        expert = write_atomic(tmp_path / "a" / "expert_000.safetensors",
                              lambda tmp: save_file({"w": torch.zeros(2)}, str(tmp)))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (text, blob, expert)}
    assert set(modes.values()) == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_temp_files_of_dead_writers_are_removed(tmp_path):
    import bench.core.io as bio

    final = tmp_path / "distill" / "ckpt.pt"
    final.parent.mkdir()
    dead = final.parent / f".{final.name}.{bio._HOST}~{_dead_pid()}~abcd1234.tmp"  # a SIGKILLed writer's
    alive = final.parent / f".{final.name}.{bio._HOST}~{os.getppid()}~abcd1234.tmp"  # a live process's
    elsewhere = final.parent / f".{final.name}.otherhost~1~abcd1234.tmp"  # maybe alive on another node
    for path in (dead, alive, elsewhere):
        path.write_text("half")
    with atomic_path(final) as tmp:  # the next writer of the same file clears the dead one's
        assert bio._HOST in tmp.name and f"~{os.getpid()}~" in tmp.name
        tmp.write_text("whole")
    assert final.read_text() == "whole"
    assert not dead.exists() and alive.exists() and elsewhere.exists()
    dead.write_text("half")
    assert remove_stale_temp_files(tmp_path, older_than_s=3600) == [dead]  # dead: whatever its age
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([alive, elsewhere])  # the age rule


# ----------------------------------------------------------------------------- the cache command


def test_cache_command_lists_and_prunes_what_the_grid_does_not_read(tmp_path, capsys):
    grid = tiny_grid(tmp_path)
    assert len(GridRun(grid, progress=False).run().done) == 3
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(to_dict(grid)))
    cache = Path(grid.cache_dir)
    old_proxy = next((cache / "proxy").glob("*.pt"))
    legacy = cache / "images" / "tiny-8px-0123456789abcdef.pt"  # an image cache of an older layout
    legacy.parent.mkdir(exist_ok=True)  # the embedded pixels are there already
    legacy.write_bytes(b"x" * 100)
    unknown = cache / "notes.txt"
    unknown.write_text("mine")
    assert main(["cache", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"unreferenced images 100 B: {legacy}" in out and str(old_proxy) not in out
    assert out.count("unreferenced images") == 1  # the grid's rendered embedded pixels are read
    assert "text" in out and "other (kept)" in out

    assert "unreferenced sets" not in out  # the sets the cells keep are read (bench/grid/set_index.py)

    # Another proxy recipe: the old proxy is no longer read, nor the set herding made from it;
    # prune removes them and the legacy file, and keeps random's set (it reads no proxy).
    (herding_set,) = (cache / "sets").glob("embedded-herding-*.pt")
    (random_set,) = (cache / "sets").glob("embedded-random-*.pt")
    assert main(["cache", "--config", str(config), "--set", "proxy.epochs=2", "--prune"]) == 0
    out = capsys.readouterr().out
    assert "unreferenced proxy" in out and "unreferenced sets" in out and "pruned 3 entries" in out
    assert not old_proxy.exists() and not legacy.exists() and unknown.exists()
    assert not herding_set.exists() and not herding_set.with_suffix(".json").exists()
    assert random_set.exists() and random_set.with_suffix(".json").exists()
    assert len(list((cache / "text").glob("*.pt"))) == 3  # the caption embeddings are still read


def test_prune_keeps_unknown_files_and_knows_every_expert_and_checkpoint(tmp_path):
    """Issue 20, item 4: a file of a kind's folder whose name that kind never gives is kept
    (``proxy/my-notes.pt`` was deleted); a checkpoint's dataset is read with the method names
    (``embedded-distill-joint-<key>.pt`` is of dataset ``embedded``, not ``embedded-distill``);
    an expert beyond the grid's ``n_experts`` is not read, so prune removes it."""
    from bench.commands.cache import _scan, inventory, prune, referenced

    grid = tiny_grid(tmp_path, methods=[{"name": "distill-joint", "params": {"max_start_epoch": 1}}],
                     experts={"n_experts": 1, "epochs": 2},
                     datasets=[{"source": "embedded", "embedded": {
                         "n_train_images": 20, "n_val_images": 2, "n_test_images": 4, "resolution": 16}}])
    cache = Path(grid.cache_dir)
    (experts,) = [p for p in referenced(grid)[0] if p.parent == cache / "experts"]
    kept_expert, extra_expert = experts / "expert_000.safetensors", experts / "expert_001.safetensors"
    notes, other_notes = cache / "proxy" / "my-notes.pt", experts / "README.txt"
    checkpoint = cache / "distill" / "embedded-distill-joint-0123456789abcdef.pt"
    for path in (kept_expert, extra_expert, notes, other_notes, checkpoint):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    scanned = {paths[0]: (kind, dataset) for kind, dataset, paths in _scan(cache, known=[])}
    assert scanned[checkpoint] == ("distill", "embedded")  # no grid dataset to go by
    assert scanned[notes] == scanned[other_notes] == ("other", "?")
    assert scanned[kept_expert] == scanned[extra_expert] == ("experts", "embedded")
    entries = {e.paths[0]: e.referenced for e in inventory(grid)}
    assert entries[kept_expert] and not entries[extra_expert]
    assert entries[checkpoint]  # the grid's distillation cell has not finished: it may resume from it
    prune(grid, inventory(grid))
    assert kept_expert.exists() and notes.exists() and other_notes.exists() and checkpoint.exists()
    assert not extra_expert.exists()
