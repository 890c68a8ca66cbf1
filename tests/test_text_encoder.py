"""Frozen text encoder: pooling, local loading, and the on-disk cache."""

from __future__ import annotations

import pytest
import torch

from bench.data.text_encoder import (
    TextEncoder,
    TextEncoderConfig,
    cached_caption_embeddings,
)
from bench.data.tiny_bert import caption_words, save_tiny_bert

CAPTIONS = ["a red circle", "two blue squares above a large green striped triangle", "a dog"]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(batch_size=2))


def test_mean_pooling_matches_unpadded_forward(minilm):
    emb = minilm.encode(CAPTIONS)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    for i, caption in enumerate(CAPTIONS):  # one at a time: no padding at all
        batch = minilm._tokenizer([caption], return_tensors="pt")
        with torch.no_grad():
            hidden = minilm._model(**batch).last_hidden_state[0]
        ref = torch.nn.functional.normalize(hidden.mean(0), dim=0)
        torch.testing.assert_close(emb[i], ref, atol=1e-5, rtol=1e-4)


def test_related_captions_are_closer(minilm):
    a, b, c = minilm.encode(["a small red circle", "a tiny red disc", "three green triangles on grey"])
    assert float(a @ b) > float(a @ c)


def test_cache_hit_skips_model(tmp_path, monkeypatch):
    cfg = TextEncoderConfig()
    first = cached_caption_embeddings(cfg, CAPTIONS, tmp_path)
    assert len(list((tmp_path / "text").glob("*.pt"))) == 1
    monkeypatch.setattr(TextEncoder, "_load", lambda self: (_ for _ in ()).throw(AssertionError("model loaded")))
    second = cached_caption_embeddings(cfg, CAPTIONS, tmp_path)
    assert torch.equal(first, second)
    with pytest.raises(AssertionError, match="model loaded"):  # different captions miss the cache
        cached_caption_embeddings(cfg, CAPTIONS[:2], tmp_path)


def test_cls_pooling_from_a_local_tiny_bert(tmp_path):
    model_dir = save_tiny_bert(tmp_path / "tiny-bert", caption_words(CAPTIONS))
    enc = TextEncoder(TextEncoderConfig(path=str(model_dir), pooling="cls", normalize=False))
    emb = enc.encode(CAPTIONS)
    assert emb.shape == (3, 32)
    batch = enc._tokenizer([CAPTIONS[1]], return_tensors="pt")
    with torch.no_grad():
        ref = enc._model(**batch).last_hidden_state[0, 0]
    torch.testing.assert_close(emb[1], ref, atol=1e-5, rtol=1e-4)


def test_missing_model_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextEncoderConfig(path=str(tmp_path / "nowhere")).model_dir()
