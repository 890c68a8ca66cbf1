"""Distillation: expert trajectories, the matching loss, meta-gradients, resumption, the runner.

Everything runs on the tiny embedded grid (16 px images, a width-8 depth-2 ConvNet, 300 train
pairs) with two experts trained for three epochs, once for the module. Torch runs on one
thread here: these problems are far too small to gain from two, and a busy second core makes
OpenMP's spin-waiting very slow.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

import bench.distill.experts
from bench.core.env import torch_threads
from bench.distill.experts import (
    TrajectoryBuffer,
    ensure_experts,
    expert_dir,
    expert_key,
    open_buffer,
)
from bench.distill.flat_params import ParamLayout
from bench.distill.matching import MatchingConfig, TrajectoryMatcher
from bench.distill.unroll import matching_distance
from bench.grid.runner import GridRun
from bench.models.student import build_student
from bench.registry import get_method
from benchmarks.original_loop import original_meta_gradients
from bench.trajectory_api import synthetic_start
from tests.grid_helpers import TINY_EXPERTS, distill_env, tiny_grid

CPU = torch.device("cpu")
EXPERTS = TINY_EXPERTS
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with torch_threads(1):
        yield distill_env(tmp_path_factory.mktemp("distill"))


def _student(env, seed: int = 0):
    return build_student(env.grid.model, env.data.train.resolution, env.data.text_dim, seed)


def _real(env, n: int = 10, seed: int = 0):
    indices = np.sort(np.random.default_rng(seed).choice(env.data.train.n_captions, size=n, replace=False))
    return env.data.train_pairs(torch.as_tensor(indices))


def _matcher(env, cfg: MatchingConfig, checkpoint=None, **kwargs):
    return TrajectoryMatcher(_student(env), env.buffer, cfg, CPU, checkpoint=checkpoint, **kwargs)


def _learned(cfg: MatchingConfig, real, learn_images=True, learn_texts=True):
    return synthetic_start(real, cfg, learn_images, learn_texts)


# ----------------------------------------------------------------------------- experts

def test_one_file_per_expert_with_every_epoch(env):
    buffer, cfg = env.buffer, env.cfg
    directory = buffer.paths[0].parent
    assert sorted(p.name for p in directory.iterdir()) == ["expert_000.safetensors", "expert_001.safetensors"]
    assert len(buffer) == 2 and buffer.epochs == 3
    names = set(_student(env).trainable_parameters())
    for i, path in enumerate(buffer.paths):
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata()["expert_key"] == buffer.key
            assert set(f.keys()) == {f"{e:03d}/{n}" for e in range(4) for n in names}
        epochs = [buffer.params(i, e) for e in range(4)]
        assert all(set(p) == names for p in epochs)
        for before, after in zip(epochs, epochs[1:]):  # every epoch moved the parameters
            assert any(not torch.equal(before[n], after[n]) for n in names)
    with pytest.raises(IndexError):
        buffer.params(0, 4)
    assert buffer.size_bytes() == sum(p.stat().st_size for p in buffer.paths)
    assert buffer.size_bytes() == sum(p.stat().st_size for p in directory.iterdir())
    assert not torch.equal(buffer.params(0, 3)["text_head.fc.weight"], buffer.params(1, 3)["text_head.fc.weight"])
    assert cfg.n_experts == len(buffer)


def test_epoch_zero_is_the_seeded_initialisation(env):
    for i in range(env.cfg.n_experts):
        init = build_student(env.grid.model, env.data.train.resolution, env.data.text_dim, seed=env.cfg.seed + i)
        recorded = env.buffer.params(i, 0)
        expected = init.trainable_parameters()
        assert set(recorded) == set(expected)
        for name, tensor in expected.items():
            assert torch.equal(recorded[name], tensor.detach()), name


def test_existing_experts_are_not_retrained(env, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("ensure_experts retrained an expert that is on disk")

    monkeypatch.setattr(bench.distill.experts, "train_student", refuse)
    mtimes = [p.stat().st_mtime_ns for p in env.buffer.paths]
    again = ensure_experts(env.data, env.grid.model, env.cfg, env.base, env.grid.cache_dir, CPU)
    assert again.paths == env.buffer.paths and again.key == env.buffer.key
    assert [p.stat().st_mtime_ns for p in again.paths] == mtimes
    assert torch.equal(again.params(1, 2)["text_head.fc.weight"], env.buffer.params(1, 2)["text_head.fc.weight"])


def test_a_file_from_another_recipe_is_refused(env, tmp_path):
    tensors = load_file(str(env.buffer.paths[0]))
    save_file(tensors, str(tmp_path / "expert_000.safetensors"), metadata={"expert_key": "someone-else"})
    buffer = TrajectoryBuffer(tmp_path, 1, env.cfg.epochs, env.buffer.key)
    with pytest.raises(ValueError, match="key mismatch"):
        buffer.params(0, 0)
    with pytest.raises(FileNotFoundError):
        TrajectoryBuffer(tmp_path, 2, env.cfg.epochs, env.buffer.key)


def test_a_shorter_expert_run_records_the_same_first_epochs(env):
    """No part of the expert recipe depends on the total number of epochs, so experts trained
    for fewer epochs (all that matching reads) hold exactly the longer run's first snapshots:
    the paper configs' note that experts.epochs 3 gives the results of 10 relies on this."""
    short = replace(env.cfg, n_experts=1, epochs=2)
    buffer = ensure_experts(env.data, env.grid.model, short, env.base, env.grid.cache_dir, CPU)
    assert buffer.key != env.buffer.key
    for epoch in range(3):
        long, cut = env.buffer.params(0, epoch), buffer.params(0, epoch)
        assert set(long) == set(cut)
        assert all(torch.equal(long[n], cut[n]) for n in long), epoch


def test_a_changed_recipe_gets_another_directory(env):
    def directory(cfg, base=env.base):
        return expert_dir(env.grid.cache_dir, env.data, expert_key(env.data, env.grid.model, cfg, base))

    here = directory(env.cfg)
    assert here == env.buffer.paths[0].parent
    changed = [replace(env.cfg, lr_image=0.05), replace(env.cfg, epochs=4), replace(env.cfg, batch_size=30),
               replace(env.cfg, seed=7)]
    dirs = [directory(c) for c in changed] + [directory(env.cfg, replace(env.base, temperature=0.05))]
    assert here not in dirs and len(set(dirs)) == len(dirs)
    with pytest.raises(FileNotFoundError):
        open_buffer(env.data, env.grid.model, changed[0], env.base, env.grid.cache_dir)


# ----------------------------------------------------------------------------- the loss

def test_matching_loss_is_the_normalised_distance_per_modality(env):
    student = _student(env)
    layout = ParamLayout.of(student)
    gen = torch.Generator().manual_seed(0)
    shapes = {n: p.shape for n, p in student.trainable_parameters().items()}
    start, target, final = ({n: torch.randn(s, generator=gen) for n, s in shapes.items()} for _ in range(3))
    flat = {k: layout.flatten(d) for k, d in (("start", start), ("target", target), ("final", final))}
    got = matching_distance(flat["final"], flat["start"], flat["target"], layout)

    expected = 0.0
    for prefixes in (("image_encoder.", "image_projection."), ("text_head.",)):
        names = [n for n in shapes if n.startswith(prefixes)]
        assert names
        side = {k: torch.cat([d[n].flatten() for n in names]).double() for k, d in
                (("final", final), ("start", start), ("target", target))}
        expected += float(((side["final"] - side["target"]) ** 2).sum() / ((side["start"] - side["target"]) ** 2).sum())
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # Reaching the target costs nothing; staying at the start costs 1 per modality.
    assert float(matching_distance(flat["target"], flat["start"], flat["target"], layout)) == 0.0
    assert float(matching_distance(flat["start"], flat["start"], flat["target"], layout)) == pytest.approx(2.0, rel=1e-6)
    # Merged: one ratio over both sides (LoRS's --merge_loss_branches); not moving costs 1.
    whole = {k: v.double() for k, v in flat.items()}
    merged = float(((whole["final"] - whole["target"]) ** 2).sum() / ((whole["start"] - whole["target"]) ** 2).sum())
    got_merged = matching_distance(flat["final"], flat["start"], flat["target"], layout, merge_sides=True)
    assert float(got_merged) == pytest.approx(merged, rel=1e-5) and abs(merged - expected) > 0.01
    assert float(matching_distance(flat["start"], flat["start"], flat["target"], layout, True)) == pytest.approx(1.0)


def test_the_flat_layout_round_trips_and_puts_the_image_side_first(env):
    student = _student(env)
    layout = ParamLayout.of(student)
    params = {n: p.detach() for n, p in student.trainable_parameters().items()}
    flat = layout.flatten(params)
    assert flat.shape == (sum(p.numel() for p in params.values()),) and layout.numel == flat.numel()
    back = layout.unflatten(flat)
    assert set(back) == set(params) and all(torch.equal(back[n], params[n]) for n in params)
    image = [n for n in params if student.modality_of(n) == "image"]
    assert set(layout.names[: layout.n_image_tensors]) == set(image)
    assert layout.n_image == sum(params[n].numel() for n in image)
    steps = layout.step_sizes(torch.tensor([0.5, 2.0]))
    assert bool((steps[: layout.n_image] == 0.5).all()) and bool((steps[layout.n_image:] == 2.0).all())


# ----------------------------------------------------------------------------- meta-gradients

def _tensors(matcher, cfg, real, dtype=torch.float32, learn_images=True, learn_texts=True):
    learned = _learned(cfg, real, learn_images, learn_texts)
    return {k: t.to(dtype).detach().requires_grad_(t.requires_grad) for k, t in matcher.tensors(learned).items()}


def _meta(env, cfg, dtype, dropout, it=1, inner_loss=None, extra=None):
    """Meta-gradients of both memory modes and of the reference loop, on one problem."""
    model = replace(env.grid.model, text_dropout=dropout)
    student = build_student(model, env.data.train.resolution, env.data.text_dim, 0).to(dtype)
    real = _real(env, n=12)
    out = {}
    for memory in ("unrolled", "recompute"):
        matcher = TrajectoryMatcher(student, env.buffer, replace(cfg, memory=memory), CPU, inner_loss=inner_loss)
        tensors = _tensors(matcher, cfg, real, dtype)
        tensors["lrs"] = torch.tensor([0.02, 0.05], dtype=dtype, requires_grad=True)
        tensors.update({k: v.clone().requires_grad_(True) for k, v in (extra or {}).items()})
        out[memory] = matcher.meta_gradients(tensors, seed=5, it=it)
    expert, start_epoch, plan = matcher.plan(12, 5, it)
    if inner_loss is None:
        start = matcher.snapshots.get(expert, start_epoch)
        target = matcher.snapshots.get(expert, start_epoch + cfg.expert_epochs)
        t = _tensors(matcher, cfg, real, dtype)
        t["lrs"] = torch.tensor([0.02, 0.05], dtype=dtype, requires_grad=True)
        with torch.random.fork_rng(devices=[]):
            out["original"] = original_meta_gradients(student, matcher.layout, t["images"], t["texts"], t["lrs"],
                                                      start, target, plan, cfg.inner_logit_scale)
    return out


@pytest.mark.parametrize("syn_steps", [1, 3, 8])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_recompute_gives_the_unrolled_meta_gradients(env, syn_steps, dropout, dtype, rtol):
    """The constant-memory mode is exact: the same loss and gradients (images, texts, step sizes)
    as back-propagating through the kept graph, and as an independent re-implementation of the
    original loop (one flat vector per tower, every iterate kept)."""
    cfg = MatchingConfig(syn_steps=syn_steps, batch_syn=5, checkpoint_every=0)
    out = _meta(env, cfg, dtype, dropout)
    (loss, grads) = out["unrolled"]
    assert set(grads) == {"images", "texts", "lrs"}
    assert all(float(g.abs().sum()) > 0 and bool(torch.isfinite(g).all()) for g in grads.values())
    for other in ("recompute", "original"):
        other_loss, other_grads = out[other]
        assert set(other_grads) == set(grads), other
        torch.testing.assert_close(other_loss, loss, rtol=rtol, atol=0, msg=other)
        for name in grads:  # relative to the gradient's own scale
            scale = float(grads[name].abs().max())
            torch.testing.assert_close(other_grads[name], grads[name], rtol=rtol, atol=rtol * scale, msg=f"{other} {name}")


@pytest.mark.parametrize("syn_steps,segment", [(8, 3), (8, 2), (5, 1), (3, 2), (4, 4), (4, 9)])
def test_iterate_segments_replay_the_same_steps(env, syn_steps, segment):
    """Keeping every s-th iterate and replaying the rest is the same computation: the
    meta-gradients equal (bitwise, on CPU) those of recompute keeping every iterate, with
    dropout on so a replayed step must redraw its own masks."""
    model = replace(env.grid.model, text_dropout=0.1)
    student = build_student(model, env.data.train.resolution, env.data.text_dim, 0).to(torch.float64)
    real = _real(env, n=12)
    out = {}
    for seg in (None, segment):
        cfg = MatchingConfig(syn_steps=syn_steps, batch_syn=5, checkpoint_every=0, memory="recompute",
                             iterate_segment=seg)
        matcher = TrajectoryMatcher(student, env.buffer, cfg, CPU)
        tensors = _tensors(matcher, cfg, real, torch.float64)
        tensors["lrs"] = torch.tensor([0.02, 0.05], dtype=torch.float64, requires_grad=True)
        out[seg] = matcher.meta_gradients(tensors, seed=5, it=2)
    (loss, grads), (seg_loss, seg_grads) = out[None], out[segment]
    assert torch.equal(seg_loss, loss)
    assert set(seg_grads) == set(grads) == {"images", "texts", "lrs"}
    assert all(torch.equal(seg_grads[name], grads[name]) for name in grads)


@pytest.mark.parametrize("bad", [{"lr_txt": -1.0}, {"lr_img": -5.0}, {"lr_lr": -1e-3}, {"momentum": 1.0},
                                 {"momentum": -0.1}, {"max_update": 0.0}])
def test_matching_config_rejects_rates_that_make_no_sense(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        MatchingConfig(**bad)


def test_iterate_segment_needs_recompute():
    with pytest.raises(ValueError, match="iterate_segment"):
        MatchingConfig(iterate_segment=2)
    with pytest.raises(ValueError, match="iterate_segment"):
        MatchingConfig(memory="recompute", iterate_segment=0)


def test_dropout_masks_follow_the_step_seed(env):
    """With dropout on, the same iteration gives the same gradients twice (the masks are the
    step's, not the global RNG's) and another iteration's masks give other gradients."""
    cfg = MatchingConfig(syn_steps=2, batch_syn=5, max_start_epoch=1, checkpoint_every=0)
    a, b = _meta(env, cfg, torch.float64, 0.5, it=1), _meta(env, cfg, torch.float64, 0.5, it=1)
    assert torch.equal(a["recompute"][1]["texts"], b["recompute"][1]["texts"])
    without = _meta(env, cfg, torch.float64, 0.0, it=1)
    assert not torch.allclose(a["recompute"][1]["texts"], without["recompute"][1]["texts"])


def test_a_method_supplied_inner_loss_and_tensor_get_exact_gradients(env):
    """An inner loss reading an extra learned tensor (here a learned logit scale, the shape of
    LoRS's similarity parameters): both modes reach it, with the same gradient."""
    from bench.models.losses import contrastive_loss

    def scaled(image_emb, text_emb, batch, tensors):
        return contrastive_loss(image_emb, text_emb, 1.0) * 0 + contrastive_loss(
            image_emb * tensors["scale"], text_emb, 1.0)

    cfg = MatchingConfig(syn_steps=3, batch_syn=5, checkpoint_every=0)
    out = _meta(env, cfg, torch.float64, 0.0, inner_loss=scaled, extra={"scale": torch.tensor(10.0, dtype=torch.float64)})
    (_, grads), (_, grads2) = out["unrolled"], out["recompute"]
    assert set(grads) == set(grads2) == {"images", "texts", "lrs", "scale"}
    assert float(grads["scale"].abs()) > 0
    for name in grads:
        torch.testing.assert_close(grads2[name], grads[name], rtol=1e-10, atol=1e-12)


def test_bf16_autocast_runs_and_stays_close_to_fp32(env):
    cfg = MatchingConfig(syn_steps=2, batch_syn=5, checkpoint_every=0)
    real = _real(env, n=12)
    grads = {}
    for precision in ("fp32", "bf16"):
        matcher = _matcher(env, replace(cfg, precision=precision))
        loss, grads[precision] = matcher.meta_gradients(_tensors(matcher, cfg, real), seed=0, it=0)
        assert bool(torch.isfinite(loss))
    for name in ("images", "texts"):
        cos = F.cosine_similarity(grads["bf16"][name].flatten(), grads["fp32"][name].flatten(), dim=0)
        assert 0.9 < float(cos) < 1.0, name  # close, but bf16 did run (not bit-identical)


@pytest.mark.parametrize("method", ["distill-joint", "distill-image", "distill-text"])
def test_gradients_reach_what_the_variant_learns(env, method):
    cls = get_method(method)
    cfg = MatchingConfig(iterations=1, syn_steps=2, batch_syn=5, checkpoint_every=0)
    matcher = _matcher(env, cfg)
    tensors = matcher.tensors(cls(cfg).learned(_real(env)))
    loss, grads = matcher.meta_gradients(tensors, seed=0, it=0)
    expected = {"lrs"} | ({"images"} if cls.learn_images else set()) | ({"texts"} if cls.learn_texts else set())
    assert set(grads) == expected
    assert bool((grads["lrs"] != 0).all())
    for name in expected:
        assert float(grads[name].abs().sum()) > 0, name
    for name, learned in (("images", cls.learn_images), ("texts", cls.learn_texts)):
        assert tensors[name].requires_grad == learned


@pytest.mark.parametrize("method", ["distill-image", "distill-text"])
def test_the_fixed_modality_stays_real(env, method):
    cls = get_method(method)
    cfg = MatchingConfig(iterations=3, syn_steps=2, batch_syn=5, checkpoint_every=0)
    learned = cls(cfg).learned(_real(env))
    state = _matcher(env, cfg).run(learned, seed=0, key="fixed")
    assert torch.equal(state.tensors["images"], learned["images"].value) != cls.learn_images
    assert torch.equal(state.tensors["texts"], learned["texts"].value) != cls.learn_texts


def test_matching_loss_decreases(env):
    # Step sizes held fixed (lr_lr=0) so the decrease is the synthetic images and texts at work:
    # shrinking step sizes alone could only approach the no-movement loss of 2. One start epoch
    # removes most of the iteration-to-iteration noise.
    cfg = MatchingConfig(iterations=40, syn_steps=4, max_start_epoch=1, syn_lr_init=0.05, lr_img=3000,
                         lr_txt=3000, lr_lr=0.0, checkpoint_every=0)
    state = _matcher(env, cfg).run(_learned(cfg, _real(env)), seed=0, key="decrease")
    losses = np.asarray(state.losses)
    assert len(losses) == 40 and np.isfinite(losses).all()
    first, last = losses[:5].mean(), losses[-5:].mean()
    assert last < 0.8 * first, (first, last)
    assert last < 1.8, last  # clearly better than not moving (2)


def test_step_sizes_never_go_negative(env):
    # A large lr_lr for this problem: the step sizes are pushed down fast.
    cfg = MatchingConfig(iterations=12, syn_steps=2, batch_syn=5, lr_lr=0.05, checkpoint_every=0)
    state = _matcher(env, cfg).run(_learned(cfg, _real(env)), seed=0, key="clamp")
    assert bool((state.tensors["lrs"] >= 0).all()) and np.isfinite(state.losses).all()
    assert bool((state.tensors["lrs"] == 0).any())  # the clamp did bite


def test_a_batch_larger_than_the_set_is_the_whole_set(env, monkeypatch):
    import bench.distill.unroll

    batches = []
    original = bench.distill.unroll.functional_embed

    def spy(student, params, images, texts, **kwargs):
        batches.append(images.shape[0])
        return original(student, params, images, texts, **kwargs)

    monkeypatch.setattr(bench.distill.unroll, "functional_embed", spy)
    cfg = MatchingConfig(iterations=1, syn_steps=3, batch_syn=50, checkpoint_every=0, memory="unrolled")
    _matcher(env, cfg).run(_learned(cfg, _real(env, n=10)), seed=0, key="big batch")
    assert batches == [10, 10, 10]  # not 50 rows with every pair five times over


def test_expert_snapshots_are_read_from_disk_once(env, monkeypatch):
    cfg = MatchingConfig(iterations=6, syn_steps=1, batch_syn=5, checkpoint_every=0)
    matcher = _matcher(env, cfg)
    reads = []
    original = env.buffer.params
    monkeypatch.setattr(env.buffer, "params", lambda e, ep: reads.append((e, ep)) or original(e, ep))
    matcher.run(_learned(cfg, _real(env)), seed=0, key="snapshots")
    assert reads and len(reads) == len(set(reads))  # every (expert, epoch) at most once
    assert all(ep <= cfg.last_epoch for _, ep in reads)


def test_start_epochs_come_from_the_configured_range(env):
    cfg = MatchingConfig(syn_steps=1, max_start_epoch=2, min_start_epoch=1, checkpoint_every=0)
    matcher = _matcher(env, cfg)
    assert {matcher.plan(10, 0, it)[1] for it in range(30)} == {1}
    with pytest.raises(ValueError, match="min_start_epoch"):
        MatchingConfig(max_start_epoch=2, min_start_epoch=2)


# ----------------------------------------------------------------------------- resumption

def test_resumed_run_repeats_the_uninterrupted_one(env, tmp_path, monkeypatch):
    cfg = MatchingConfig(iterations=6, syn_steps=3, batch_syn=5, checkpoint_every=2)
    learned = _learned(cfg, _real(env))
    full = _matcher(env, cfg).run(learned, seed=3, key="k")
    assert full.iteration == 6 and len(full.losses) == 6 and full.resumes == 0

    path = tmp_path / "ckpt.pt"
    first = _matcher(env, cfg, checkpoint=path).run(learned, seed=3, key="k", stop_after=3)
    assert first.iteration == 3 and path.is_file()
    assert first.losses == full.losses[:3]

    resumed_matcher = _matcher(env, cfg, checkpoint=path)  # a new matcher, as after a restart
    calls = []
    original = resumed_matcher.meta_gradients
    monkeypatch.setattr(resumed_matcher, "meta_gradients", lambda *a: calls.append(a[-1]) or original(*a))
    resumed = resumed_matcher.run(learned, seed=3, key="k")
    assert calls == [3, 4, 5]
    for name in ("images", "texts", "lrs"):
        assert torch.equal(resumed.tensors[name], full.tensors[name]), name
    assert resumed.losses == full.losses and resumed.iteration == 6
    # The record says it resumed, and the time covers both runs, not only the second.
    assert resumed.resumes == 1
    assert resumed.seconds > first.seconds > 0
    assert full.earlier_seconds == 0 and resumed.earlier_seconds == first.seconds  # what the first run paid

    # A checkpoint made under another key is ignored: the run starts from iteration 0.
    other = _matcher(env, cfg, checkpoint=path).run(learned, seed=3, key="another key", stop_after=1)
    assert other.iteration == 1 and other.losses == full.losses[:1] and other.resumes == 0


def test_a_snapshot_of_a_longer_run_is_the_shorter_run_finished(env, tmp_path, monkeypatch):
    """Tuning reads "when to stop" from one run: the state a 6-iteration run snapshots at 4 is
    bitwise the state of a 4-iteration run, and a run of 4 finds it finished (no iteration)."""
    short_cfg = MatchingConfig(iterations=4, syn_steps=2, batch_syn=5)
    learned = _learned(short_cfg, _real(env))
    short = _matcher(env, short_cfg).run(learned, seed=5, key="k4")

    long_cfg = MatchingConfig(iterations=6, syn_steps=2, batch_syn=5, snapshots=(4,))
    snapshot = tmp_path / "run-of-4.pt"
    matcher = _matcher(env, long_cfg, checkpoint=tmp_path / "run-of-6.pt")
    matcher.keep_at = {4: ("k4", snapshot)}
    long = matcher.run(learned, seed=5, key="k6")
    assert long.iteration == 6 and long.losses[:4] == short.losses and snapshot.is_file()

    reader = _matcher(env, short_cfg, checkpoint=snapshot)
    calls = []
    monkeypatch.setattr(reader, "meta_gradients", lambda *a: calls.append(a[-1]))
    found = reader.run(learned, seed=5, key="k4")
    assert calls == [] and found.iteration == 4 and found.losses == short.losses
    for name in ("images", "texts", "lrs"):
        assert torch.equal(found.tensors[name], short.tensors[name]), name


def test_snapshots_must_lie_inside_the_run():
    with pytest.raises(ValueError, match="snapshots"):
        MatchingConfig(iterations=6, snapshots=(6,))
    with pytest.raises(ValueError, match="snapshots"):
        MatchingConfig(iterations=6, snapshots=(0,))


def test_a_corrupt_checkpoint_is_named_and_the_run_starts_over(env, tmp_path):
    cfg = MatchingConfig(iterations=2, syn_steps=1, batch_syn=5, checkpoint_every=1)
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match=str(path)):
        state = _matcher(env, cfg, checkpoint=path).run(_learned(cfg, _real(env)), seed=0, key="k")
    # A checkpoint of another layout (e.g. an older version of the matcher) is not trusted either.
    torch.save({"key": "k", "state": {"images": torch.zeros(1)}}, path)
    with pytest.warns(UserWarning, match="another version"):
        again = _matcher(env, cfg, checkpoint=path).run(_learned(cfg, _real(env)), seed=0, key="k")
    assert again.losses == state.losses
    assert state.iteration == 2 and state.resumes == 0
    assert torch.load(path, weights_only=False)["state"]["iteration"] == 2  # repaired


# ----------------------------------------------------------------------------- config errors

def test_config_errors(env):
    with pytest.raises(ValueError) as err:
        _matcher(env, MatchingConfig(max_start_epoch=3, expert_epochs=1))
    assert "max_start_epoch 3" in str(err.value) and "expert_epochs 1" in str(err.value)
    assert "3 recorded" in str(err.value)
    _matcher(env, MatchingConfig(max_start_epoch=2, expert_epochs=1))  # exactly enough
    with pytest.raises(ValueError, match="batch_syn"):
        MatchingConfig(batch_syn=1)
    with pytest.raises(ValueError):
        MatchingConfig(syn_steps=0)


# ----------------------------------------------------------------------------- plots, runner

def test_plot_matching_loss_writes_a_png(tmp_path):
    from PIL import Image

    from bench.grid.pictures import plot_matching_loss

    losses = list(2.0 - np.log1p(np.arange(60)) / 5 + 0.1 * np.sin(np.arange(60)))
    for name, values in (("many.png", losses), ("one.png", [1.5]), ("spiky.png", [1e4, 3.0, 2.0, 1.0])):
        path = plot_matching_loss(values, tmp_path / "sub" / name, title="embedded distill-joint")
        assert Path(path) == tmp_path / "sub" / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["many.png", "one.png", "spiky.png"]
    with pytest.raises(ValueError):
        plot_matching_loss([], tmp_path / "empty.png", title="nothing")


def test_distill_cell_through_the_runner(env):
    params = {"iterations": 5, "syn_steps": 2, "batch_syn": 5, "checkpoint_every": 2}
    grid = tiny_grid(env.root, methods=[{"name": "distill-joint", "params": params}], include_full=False,
                     experts=EXPERTS)
    run = GridRun(grid, progress=False).run()
    results = Path(grid.results_dir)
    failures = [p.read_text() for p in (results / "records").glob("*.failed.json")]
    assert not run.failed and len(run.done) == 1, failures
    cell_id = "embedded__distill-joint__b10__s0"
    record = json.loads((results / "records" / f"{cell_id}.json").read_text())
    assert record["kind"] == "distillation" and record["n_pairs"] == 10
    lrs = record["learned_lrs"]
    assert set(lrs) == {"image", "text"} and all(v >= 0 for v in lrs.values())
    start = MatchingConfig().syn_lr_init  # the step sizes start here (the params leave it at its default)
    assert lrs["image"] != start and lrs["text"] != start  # and were learned
    assert [(s["lr_image"], s["lr_text"]) for s in record["per_seed"]] == [(lrs["image"], lrs["text"])] * 2
    info = record["method_info"]
    assert len(info["matching_loss"]) == 5 and info["iterations"] == 5
    assert info["learned_lrs"] == lrs and len(info["init_indices"]) == 10
    assert record["expert_buffer_bytes"] == env.buffer.size_bytes()  # the module's experts, reused
    saved = torch.load(results / record["set_file"], weights_only=False)
    assert saved["images"].dtype == torch.float32 and tuple(saved["images"].shape) == (10, 3, 16, 16)
    assert tuple(saved["text_emb"].shape) == (10, env.data.text_dim) and saved["source_indices"] is None
    for picture in (f"{cell_id}.png", f"{cell_id}_loss.png"):
        assert (results / "pictures" / picture).read_bytes()[:8] == PNG_MAGIC


def test_a_checkpoint_is_not_reused_by_a_run_with_more_experts(env, tmp_path):
    """The experts' recipe key does not count the experts: a finished checkpoint of a 1-expert
    run must not be taken for the result of a 2-expert run (same recipe, same params)."""
    params = {"iterations": 2, "syn_steps": 1, "batch_syn": 5, "checkpoint_every": 1}
    sets = {}
    for n in (1, 2):
        grid = tiny_grid(tmp_path / f"n{n}", methods=[{"name": "distill-joint", "params": params}], include_full=False,
                         experts={**EXPERTS, "n_experts": n}, cache_dir=str(env.root / "cache"))
        run = GridRun(grid, progress=False).run()
        assert not run.failed
        record = json.loads(next((Path(grid.results_dir) / "records").glob("*distill-joint*.json")).read_text())
        assert record["method_info"]["resumes"] == 0  # each ran its own matching
        sets[n] = torch.load(Path(grid.results_dir) / record["set_file"], weights_only=False)["images"]
    assert len(list((env.root / "cache" / "distill").glob("*distill-joint*.pt"))) >= 2


def test_text_drift_against_a_direct_computation():
    from bench.trajectory_api import text_drift

    gen = torch.Generator().manual_seed(0)
    real = torch.randn(50, 8, generator=gen)
    init = np.array([3, 10, 20, 40])
    texts = real[init].clone() * 2.0  # same directions, twice the norm
    texts[1] = real[7] + 1e-3 * torch.randn(8, generator=gen)  # now says caption 7
    drift = text_drift(texts, real, init)
    assert drift["nearest_is_start"] == pytest.approx(0.75)
    cosines = [float(torch.dot(t, r) / (t.norm() * r.norm())) for t, r in zip(texts, real[init])]
    assert drift["cosine_to_start"] == pytest.approx(sum(cosines) / 4, abs=1e-6)
    assert drift["norm_mean"] == pytest.approx(float(texts.norm(dim=1).mean()), rel=1e-6)
    assert drift["real_norm_mean"] == pytest.approx(float(real.norm(dim=1).mean()), rel=1e-6)


def test_nearest_captions_matches_brute_force_across_chunks():
    from bench.data.text_encoder import nearest_captions

    gen = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(300, 16, generator=gen), torch.randn(37, 16, generator=gen)
    expected = [max(range(300), key=lambda j: float(torch.nn.functional.cosine_similarity(q, bank[j], dim=0)))
                for q in queries]
    assert nearest_captions(queries, bank, chunk=5).tolist() == expected
