"""Image encoders by name, loaded offline from local directories (tiny random weights)."""

from __future__ import annotations

import pytest
import torch

from bench.data.pairs import PairSet
from bench.models.image_encoders import ImageEncoderConfig, build_image_encoder
from bench.models.losses import contrastive_loss
from bench.models.student import ModelConfig, build_student, functional_embed
from bench.protocol.train import TrainConfig, train_student
from tests.hf_helpers import save_tiny, tiny_models


@pytest.mark.parametrize("kind", ["vit", "clip", "convnext", "resnet"])
def test_hf_encoder_loads_offline_and_trains(tmp_path, kind):
    _, out_dim = tiny_models()[kind]
    save_tiny(kind, tmp_path / kind)
    cfg = ModelConfig(image_encoder=ImageEncoderConfig(name="hf", path=str(tmp_path / kind)), embed_dim=16)
    student = build_student(cfg, resolution=32, text_dim=12, seed=0)
    assert student.image_encoder.out_dim == out_dim
    images = torch.randn(6, 3, 32, 32)
    img, txt = student(images, torch.randn(6, 12))
    assert img.shape == (6, 16) and torch.allclose(img.norm(dim=1), torch.ones(6))
    # Pretrained weights really were loaded: a fresh model with the same weights agrees.
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(tmp_path / kind) if kind != "clip" else None
    if reference is not None:
        reference.eval()
        student.eval()
        renorm = student.image_encoder.renormalize(images)
        out = reference(pixel_values=renorm)
        pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
        torch.testing.assert_close(student.image_encoder(images), pooled.flatten(1))
    # Second-order gradients (what trajectory matching needs) work through the tower on CPU.
    params = {k: v.detach().requires_grad_(True) for k, v in student.trainable_parameters().items()}
    x = images.requires_grad_(True)
    loss = contrastive_loss(*functional_embed(student.train(), params, x, torch.randn(6, 12)), 10.0)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    meta = sum((g ** 2).sum() for g in grads)
    meta.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    pairs = PairSet.synthetic(torch.randn(8, 3, 32, 32), torch.randn(8, 12))
    stats = train_student(student, pairs, TrainConfig(epochs=1, batch_size=4), 0, torch.device("cpu"))
    assert len(stats.epoch_losses) == 1


def test_renormalisation_maps_our_inputs_onto_theirs(tmp_path):
    from bench.data.pairs import normalize_images

    save_tiny("resnet", tmp_path / "r", std=0.25)
    enc = build_image_encoder(ImageEncoderConfig(name="hf", path=str(tmp_path / "r")), 16)
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    theirs = (pixels.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(enc.renormalize(normalize_images(pixels)), theirs, rtol=1e-5, atol=1e-5)


def test_hf_requires_a_local_directory(tmp_path):
    with pytest.raises(ValueError, match="path"):
        ImageEncoderConfig(name="hf")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_image_encoder(ImageEncoderConfig(name="hf", path=str(tmp_path)), 32)


def test_convnet_shapes_and_bad_resolution():
    enc = build_image_encoder(ImageEncoderConfig(width=8, depth=3), 32)
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 8 * 4 * 4) == (2, enc.out_dim)
    with pytest.raises(ValueError, match="divisible"):
        build_image_encoder(ImageEncoderConfig(depth=3), 20)


def test_timm_is_not_imported_by_the_core():
    import subprocess
    import sys

    code = ("import sys, bench.grid.runner, bench.commands.cli, methods.coresets.herding, methods.distill.joint; "
            "from bench.registry import discover; discover(); print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
