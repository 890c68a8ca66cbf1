"""A frozen (pretrained) image tower: a fixed feature extractor whose features are computed once."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from bench.data.pairs import PairSet
from bench.distill.matching import MatchingConfig, TrajectoryMatcher
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.student import ModelConfig, build_student
from bench.protocol.train import TrainConfig, train_student
from benchmarks.bench_distill import RandomExperts

CPU = torch.device("cpu")
FROZEN = ModelConfig(image_encoder=ImageEncoderConfig(width=4, depth=2, freeze=True), embed_dim=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=gen)
    return PairSet(images, torch.arange(12) % 6, torch.randn(12, 6, generator=gen))


def test_only_the_heads_train_and_the_tower_stays_in_eval_mode():
    student = build_student(FROZEN, 8, 6, seed=0)
    names = set(student.trainable_parameters())
    assert names and not any(n.startswith("image_encoder.") for n in names)
    assert any(n.startswith("image_projection.") for n in names) and any(n.startswith("text_head.") for n in names)
    student.train()
    assert student.training and not student.image_encoder.training and student.text_head.training
    tower = {k: v.clone() for k, v in student.image_encoder.state_dict().items()}
    train_student(student, _pairs(), TrainConfig(epochs=2, batch_size=4, lr_image=0.5, lr_text=0.5), 0, CPU)
    assert all(torch.equal(tower[k], v) for k, v in student.image_encoder.state_dict().items())


def test_cached_features_train_exactly_like_the_tower_at_every_step(monkeypatch):
    cfg = TrainConfig(epochs=3, batch_size=4, lr_image=0.5, lr_text=0.5)
    cached = build_student(FROZEN, 8, 6, seed=0)
    losses = train_student(cached, _pairs(), cfg, 0, CPU).epoch_losses
    # The same training with the tower run on every batch: the Student flag says "not frozen".
    per_step = build_student(FROZEN, 8, 6, seed=0)
    per_step.frozen_tower = False
    assert per_step.train().image_encoder.training  # (and its tower now follows the mode)
    per_step.image_encoder.eval()
    monkeypatch.setattr(per_step, "train", lambda mode=True: per_step)
    losses_per_step = train_student(per_step, _pairs(), cfg, 0, CPU).epoch_losses
    assert losses == pytest.approx(losses_per_step, rel=1e-5)
    for (name, a), b in zip(cached.trainable_parameters().items(), per_step.trainable_parameters().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("memory", ["unrolled", "recompute"])
def test_matching_on_features_gives_the_per_step_meta_gradients(memory):
    student = build_student(FROZEN, 8, 6, seed=0).double()
    experts = RandomExperts(student, 3, seed=1)
    gen = torch.Generator().manual_seed(0)
    images, texts = torch.randn(10, 3, 8, 8, generator=gen).double(), torch.randn(10, 6, generator=gen).double()
    out = {}
    for from_features in (True, False):
        matcher = TrajectoryMatcher(student, experts, MatchingConfig(syn_steps=3, batch_syn=5, memory=memory), CPU)
        assert matcher.steps.from_features
        matcher.steps.from_features = from_features
        tensors = {"images": images.clone().requires_grad_(True), "texts": texts.clone().requires_grad_(True),
                   "lrs": torch.tensor([0.1, 0.1], dtype=torch.float64, requires_grad=True)}
        out[from_features] = matcher.meta_gradients(tensors, seed=0, it=0)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-10, atol=0)
    for name in ("images", "texts", "lrs"):
        assert float(out[True][1][name].abs().sum()) > 0
        torch.testing.assert_close(out[True][1][name], out[False][1][name], rtol=1e-10, atol=1e-14)


def test_config_errors_and_weights_files(tmp_path):
    with pytest.raises(ValueError, match="embed_dim"):
        build_student(replace(FROZEN, embed_dim=None), 8, 6, seed=0)
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        build_student(replace(FROZEN, image_encoder=replace(FROZEN.image_encoder, path=str(tmp_path / "nope.pt"))), 8, 6, 0)
    with pytest.raises(FileNotFoundError, match="shipped"):
        build_student(replace(FROZEN, image_encoder=replace(FROZEN.image_encoder, path="package:nope.safetensors")), 8, 6, 0)
    # Weights load into the tower; ones for another shape are refused with the reason.
    donor = build_student(FROZEN, 8, 6, seed=5).image_encoder
    path = tmp_path / "tower.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    loaded = build_student(replace(FROZEN, image_encoder=replace(FROZEN.image_encoder, path=str(path))), 8, 6, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(loaded.image_encoder.state_dict().values(), donor.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit"):
        build_student(replace(FROZEN, image_encoder=replace(FROZEN.image_encoder, path=str(path), width=6)), 8, 6, 0)
