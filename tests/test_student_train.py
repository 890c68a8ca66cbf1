"""Student forward, functional forward and the trainer."""

from __future__ import annotations

import torch

from bench.data.pairs import PairSet, denormalize_images, normalize_images
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.losses import contrastive_loss
from bench.models.student import ModelConfig, build_student, functional_embed
from bench.protocol.train import TrainConfig, train_student

SMALL = ModelConfig(image_encoder=ImageEncoderConfig(width=8, depth=2))
CPU = torch.device("cpu")


def _pairs(n=48, res=16, dim=12, seed=0) -> PairSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n // 2, 3, res, res), dtype=torch.uint8, generator=g)
    return PairSet(images, torch.arange(n) % (n // 2), torch.randn(n, dim, generator=g))


def test_build_is_deterministic_per_seed_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    a, b, c = (build_student(SMALL, 16, 12, s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    for (n, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))


def test_functional_embed_matches_module_and_differentiates_params():
    student = build_student(SMALL, 16, 12, 0).eval()
    pairs = _pairs()
    images, texts = pairs.batch(torch.arange(8), CPU)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in student.trainable_parameters().items()}
    img_f, txt_f = functional_embed(student, params, images, texts)
    img_m, txt_m = student(images, texts)
    torch.testing.assert_close(img_f, img_m)
    torch.testing.assert_close(txt_f, txt_m)
    # Differentiable w.r.t. a *shifted* parameter set, and the shift changes the output.
    shifted = {k: v + 0.01 for k, v in params.items()}
    img_s, txt_s = functional_embed(student, shifted, images, texts)
    assert not torch.allclose(img_s, img_m)
    contrastive_loss(img_s, txt_s, 1 / 0.07).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


def test_every_parameter_has_a_modality():
    student = build_student(ModelConfig(embed_dim=16), 16, 12, 0)
    sides = {student.modality_of(n) for n, _ in student.named_parameters()}
    assert sides == {"image", "text"}


def test_contrastive_loss_against_direct_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    s = 10.0 * a @ b.T
    i2t = -torch.stack([s[i, i] - torch.logsumexp(s[i], 0) for i in range(5)]).mean()
    t2i = -torch.stack([s[i, i] - torch.logsumexp(s[:, i], 0) for i in range(5)]).mean()
    torch.testing.assert_close(contrastive_loss(a, b, 10.0), (i2t + t2i) / 2)


def test_training_is_deterministic_and_reduces_loss():
    cfg = TrainConfig(epochs=6, batch_size=16, lr_image=0.05, lr_text=0.05)
    pairs = _pairs()
    runs = []
    for _ in range(2):
        student = build_student(SMALL, 16, 12, 3)
        stats = train_student(student, pairs, cfg, seed=7, device=CPU)
        runs.append((stats, student.state_dict()))
    (s1, w1), (s2, w2) = runs
    assert s1.epoch_losses == s2.epoch_losses
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert s1.epoch_losses[-1] < s1.epoch_losses[0]
    other = build_student(SMALL, 16, 12, 3)
    s3 = train_student(other, pairs, cfg, seed=8, device=CPU)
    assert s3.epoch_losses != s1.epoch_losses


def test_epoch_hook_sees_every_epoch():
    seen = []
    student = build_student(SMALL, 16, 12, 0)
    train_student(student, _pairs(), TrainConfig(epochs=3, batch_size=16), 0, CPU, on_epoch_end=lambda e, s: seen.append(e))
    assert seen == [1, 2, 3]


def test_normalize_round_trip():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(denormalize_images(normalize_images(x)), x.float() / 255)


def test_bf16_precision_trains_under_autocast_and_is_recorded_only_when_set():
    from dataclasses import replace

    from bench.core.config import to_dict

    gen = torch.Generator().manual_seed(0)
    pairs = PairSet.synthetic(torch.randn(16, 3, 8, 8, generator=gen), torch.randn(16, 6, generator=gen))
    model = ModelConfig(image_encoder=ImageEncoderConfig(width=4, depth=1))
    cfg = TrainConfig(epochs=2, batch_size=8, lr_image=0.1, lr_text=0.1)
    results = {}
    for precision in ("fp32", "bf16"):
        student = build_student(model, 8, 6, seed=0)
        stats = train_student(student, pairs, replace(cfg, precision=precision), 0, CPU)
        results[precision] = (stats.epoch_losses, student.text_head.projection.weight.detach().clone())
        assert student.text_head.projection.weight.dtype == torch.float32  # the parameters stay float32
    assert results["fp32"][0] != results["bf16"][0]  # autocast really ran
    torch.testing.assert_close(results["bf16"][1], results["fp32"][1], rtol=0.05, atol=0.01)
    # The default leaves config hashes as before the field existed; bf16 is recorded.
    assert "precision" not in to_dict(cfg) and to_dict(replace(cfg, precision="bf16"))["precision"] == "bf16"


def test_a_diverging_training_stops_with_a_clear_error():
    import pytest

    student = build_student(SMALL, 16, 12, seed=0)
    cfg = TrainConfig(epochs=5, batch_size=8, lr_image=1e38, lr_text=1e38, momentum=0.0)
    with pytest.raises(FloatingPointError, match="training diverged.*epoch"):
        train_student(student, _pairs(), cfg, 0, CPU)


def test_embed_pairs_encodes_each_image_once_with_the_per_pair_numbers():
    """Real pairs share images (about five captions each): the embeddings equal encoding every
    pair's image on its own, and the tower sees each distinct image once."""
    from bench.protocol.embed import embed_pairs

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=gen)
    image_index = torch.tensor([0, 0, 1, 2, 2, 2, 5, 3, 5, 4, 1])
    pairs = PairSet(images, image_index, torch.randn(11, 6, generator=gen))
    student = build_student(ModelConfig(image_encoder=ImageEncoderConfig(width=4, depth=1)), 8, 6, seed=0).eval()
    seen = []
    student.image_encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    image_emb, text_emb = embed_pairs(student, pairs, torch.device("cpu"), batch_size=4)
    assert sum(seen) == 6
    with torch.no_grad():
        for i in range(len(pairs)):
            expected = student.encode_images(normalize_images(images[image_index[i]][None]))
            torch.testing.assert_close(image_emb[i:i + 1], expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(text_emb[i:i + 1], student.encode_texts(pairs.text_emb[i:i + 1]), rtol=1e-5, atol=1e-6)
