"""Differentiable augmentation: seeded, differentiable, replayed exactly inside the matcher."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.data.pairs import PairSet
from bench.distill.matching import MatchingConfig, TrajectoryMatcher
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.student import ModelConfig, build_student
from bench.protocol.augment import Augmentation, AugmentConfig, augment_batch
from bench.protocol.train import TrainConfig, train_student
from benchmarks.bench_distill import RandomExperts

CPU = torch.device("cpu")
OFF = AugmentConfig(flip=0.0, shift=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n=4, res=8, seed=0):
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_everything_off_is_the_identity():
    x = _images()
    assert torch.equal(augment_batch(x, OFF, _gen(0)), x)


def test_a_shift_moves_the_batch_and_fills_with_zeros():
    x = _images(res=8)
    cfg = AugmentConfig(shift=0.25)  # up to 2 pixels
    for seed in range(20):
        out = augment_batch(x, cfg, _gen(seed))
        # Independent reference: zero-pad by 2 and cut the window of each candidate shift.
        padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
        matches = [np.array_equal(padded[..., 2 - dy:10 - dy, 2 - dx:10 - dx], out.numpy())
                   for dy in range(-2, 3) for dx in range(-2, 3)]
        assert sum(matches) == 1, seed  # exactly one translation explains the output
    outputs = {augment_batch(x, cfg, _gen(s)).numpy().tobytes() for s in range(30)}
    assert len(outputs) > 5  # the draws really vary


def test_the_whole_batch_is_transformed_the_same_way():
    x = _images(n=1).repeat(5, 1, 1, 1)
    out = augment_batch(x, AugmentConfig(flip=0.5, shift=0.25, brightness=0.2, contrast=0.2, saturation=0.2), _gen(3))
    assert all(torch.equal(out[0], out[i]) for i in range(5))


def test_flip_and_colour_operations():
    x = _images()
    assert torch.equal(augment_batch(x, AugmentConfig(flip=1.0, shift=0.0), _gen(0)), x.flip(-1))
    bright = augment_batch(x, AugmentConfig(shift=0.0, brightness=0.5), _gen(1))
    delta = bright - x
    assert float(delta.std()) < 1e-6 and 0 < abs(float(delta.mean())) <= 0.5  # one constant offset
    sat = augment_batch(x, AugmentConfig(shift=0.0, saturation=0.5), _gen(2))
    torch.testing.assert_close(sat.mean(dim=1), x.mean(dim=1))  # the grey level is kept


def test_seeded_and_differentiable():
    cfg = AugmentConfig(flip=0.5, shift=0.25, brightness=0.2, contrast=0.2, saturation=0.2)
    x = _images().requires_grad_(True)
    assert torch.equal(augment_batch(x, cfg, _gen(7)), augment_batch(x, cfg, _gen(7)))
    assert any(not torch.equal(augment_batch(x, cfg, _gen(7)), augment_batch(x, cfg, _gen(s))) for s in range(8, 12))
    (grad,) = torch.autograd.grad(augment_batch(x, cfg, _gen(7)).square().sum(), x)
    assert float(grad.abs().sum()) > 0


def test_config_errors():
    for bad in ({"flip": 1.5}, {"shift": 0.5}, {"brightness": -0.1}):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_training_with_augmentation_is_seeded_and_differs_from_without():
    gen = torch.Generator().manual_seed(0)
    pairs = PairSet.synthetic(torch.randn(16, 3, 8, 8, generator=gen), torch.randn(16, 6, generator=gen))
    model = ModelConfig(image_encoder=ImageEncoderConfig(width=4, depth=1))
    base = TrainConfig(epochs=2, batch_size=8, lr_image=0.1, lr_text=0.1)
    runs = {}
    for label, cfg in (("off", base), ("on", replace(base, augment=AugmentConfig(shift=0.25))), ("on2", replace(base, augment=AugmentConfig(shift=0.25)))):
        student = build_student(model, 8, 6, seed=0)
        runs[label] = train_student(student, pairs, cfg, 0, CPU).epoch_losses
    assert runs["on"] == runs["on2"] and runs["on"] != runs["off"]


@pytest.mark.parametrize("frozen", [False, True])
def test_the_matcher_replays_each_steps_augmentation_exactly(frozen):
    """recompute re-runs every step's augmentation from the step's seed: the same meta-gradients
    as keeping the graph (a frozen tower with augmentation runs per step, not from features)."""
    encoder = ImageEncoderConfig(width=4, depth=2, freeze=frozen)
    model = ModelConfig(image_encoder=encoder, embed_dim=8 if frozen else None)
    student = build_student(model, 8, 6, seed=0).double()
    experts = RandomExperts(student, 3, seed=1)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(10, 3, 8, 8, generator=gen, dtype=torch.float64)
    texts = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    out = {}
    for memory in ("unrolled", "recompute"):
        cfg = MatchingConfig(syn_steps=4, batch_syn=5, memory=memory, augment=AugmentConfig(flip=0.5, shift=0.25))
        matcher = TrajectoryMatcher(student, experts, cfg, CPU, augment=Augmentation(cfg.augment))
        assert not matcher.steps.from_features
        tensors = {"images": images.clone().requires_grad_(True), "texts": texts.clone().requires_grad_(True),
                   "lrs": torch.tensor([0.05, 0.05], dtype=torch.float64, requires_grad=True)}
        out[memory] = matcher.meta_gradients(tensors, seed=0, it=2)
    for name in ("images", "texts", "lrs"):
        torch.testing.assert_close(out["recompute"][1][name], out["unrolled"][1][name], rtol=1e-10, atol=1e-12)
