"""The frozen tower's features of a large image set are computed once per process and handed
back bit for bit; anything that changes them (weights, images, device, chunking) is a new pass."""

from __future__ import annotations

import pytest
import torch

from bench.data.pairs import PairSet
from bench.models import feature_memo
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.student import ModelConfig, build_student, tower_features
from bench.protocol.train import TrainConfig, train_student

FROZEN = ModelConfig(image_encoder=ImageEncoderConfig(width=4, depth=1, freeze=True), embed_dim=8)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_memo():
    feature_memo.forget()
    yield
    feature_memo.forget()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def count_passes(student) -> list[int]:
    """How many chunks the tower has been run on since the hook was set."""
    calls = [0]
    student.image_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_a_large_set_passes_through_the_tower_once_and_comes_back_bitwise():
    images = pixels(feature_memo.MIN_IMAGES)
    student = build_student(FROZEN, 8, 6, seed=0)
    calls = count_passes(student)
    first = tower_features(student, images, CPU).clone()
    passes = calls[0]
    assert passes == -(-feature_memo.MIN_IMAGES // 512)
    again = tower_features(student, images, CPU)
    assert calls[0] == passes  # no second pass
    feature_memo.forget()
    fresh = tower_features(student, images, CPU)
    assert calls[0] == 2 * passes
    assert torch.equal(again, first) and torch.equal(fresh, first)


def test_the_key_is_the_content_not_the_object():
    images = pixels(feature_memo.MIN_IMAGES)
    one, same_weights = build_student(FROZEN, 8, 6, seed=0), build_student(FROZEN, 8, 6, seed=0)
    other_weights = build_student(FROZEN, 8, 6, seed=1)
    tower_features(one, images, CPU)
    hits, misses = count_passes(same_weights), count_passes(other_weights)
    tower_features(same_weights, images.clone(), CPU)  # another tensor, same content: kept
    assert hits[0] == 0
    theirs = tower_features(other_weights, images, CPU)  # other weights: a pass of its own
    assert misses[0] > 0
    assert not torch.equal(theirs, tower_features(one, images, CPU))
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1  # one pixel
    tower_features(same_weights, changed, CPU)
    assert hits[0] > 0
    tower_features(same_weights, images, CPU, batch_size=256)  # other chunks: another pass
    assert hits[0] > -(-feature_memo.MIN_IMAGES // 512) + 1


def test_small_sets_are_computed_every_time():
    student = build_student(FROZEN, 8, 6, seed=0)
    calls = count_passes(student)
    images = pixels(feature_memo.MIN_IMAGES - 1)
    tower_features(student, images, CPU)
    tower_features(student, images, CPU)
    assert calls[0] == 2 * -(-(feature_memo.MIN_IMAGES - 1) // 512)


def test_a_process_keeps_only_the_last_few():
    student = build_student(FROZEN, 8, 6, seed=0)
    calls = count_passes(student)
    sets = [pixels(feature_memo.MIN_IMAGES, seed) for seed in range(feature_memo.KEEP + 1)]
    for images in sets:
        tower_features(student, images, CPU)
    before = calls[0]
    tower_features(student, sets[-1], CPU)
    assert calls[0] == before  # the latest is kept
    tower_features(student, sets[0], CPU)
    assert calls[0] > before  # the oldest was dropped


def test_training_on_kept_features_equals_training_on_a_fresh_pass():
    """Two students trained in turn (as experts are) end bitwise where they end when each makes
    its own pass; the kept features are not written into by training."""
    n = feature_memo.MIN_IMAGES
    texts = torch.randn(n, 6, generator=torch.Generator().manual_seed(3))
    pairs = PairSet(pixels(n), torch.arange(n), texts, None)
    cfg = TrainConfig(epochs=1, batch_size=512, optimizer="sgd", lr_image=0.1, lr_text=0.1)

    def trained(forget_between: bool) -> list[dict[str, torch.Tensor]]:
        feature_memo.forget()
        out = []
        for seed in (0, 1):
            if forget_between:
                feature_memo.forget()
            student = build_student(FROZEN, 8, 6, seed=0)
            train_student(student, pairs, cfg, seed, CPU)
            out.append({k: v.detach().clone() for k, v in student.state_dict().items()})
        return out

    kept, fresh = trained(False), trained(True)
    for a, b in zip(kept, fresh):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
