"""RepBlend: representation blending in the unrolled steps (the matcher's head-inputs hook)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.env import torch_threads
from bench.distill.matching import MatchingConfig, TrajectoryMatcher
from bench.grid.runner import GridRun
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.student import ModelConfig, build_student, functional_embed
from bench.registry import get_method
from benchmarks.bench_distill import RandomExperts
from methods.distill.repblend import (
    RepBlend,
    RepBlendConfig,
    blend,
    blend_draw,
    representation_blending,
)
from tests.grid_helpers import TINY_EXPERTS, distill_env, records, tiny_grid

CPU = torch.device("cpu")
FROZEN = ModelConfig(image_encoder=ImageEncoderConfig(width=4, depth=2, freeze=True), embed_dim=8, text_dropout=0.2)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with torch_threads(1):
        yield distill_env(tmp_path_factory.mktemp("repblend"))


def _synthetic(n: int = 10, text_dim: int = 6, resolution: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, resolution, resolution, generator=gen, dtype=torch.float64),
            torch.randn(n, text_dim, generator=gen, dtype=torch.float64))


# ----------------------------------------------------------------------------- the rule

def test_blend_mixes_both_modalities_with_one_weight_and_one_permutation():
    gen = torch.Generator().manual_seed(0)
    features, texts = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
    perm = torch.tensor([2, 0, 3, 1])
    mixed_f, mixed_t = blend(features, texts, 0.3, perm)
    for i in range(4):
        torch.testing.assert_close(mixed_f[i], 0.3 * features[i] + 0.7 * features[perm[i]])
        torch.testing.assert_close(mixed_t[i], 0.3 * texts[i] + 0.7 * texts[perm[i]])
    same_f, same_t = blend(features, texts, 1.0, perm)  # lambda = 1: no blending
    assert torch.equal(same_f, features) and torch.equal(same_t, texts)


def test_the_draw_is_a_function_of_the_step_seed():
    lam, perm = blend_draw(7, 6, 1.0)
    lam2, perm2 = blend_draw(7, 6, 1.0)
    assert lam == lam2 and torch.equal(perm, perm2)
    assert sorted(perm.tolist()) == list(range(6))
    draws = [blend_draw(s, 6, 1.0) for s in range(400)]
    lams = np.array([d[0] for d in draws])
    assert len(set(lams.tolist())) == 400 and 0 < lams.min() and lams.max() < 1
    assert abs(lams.mean() - 0.5) < 0.05 and abs(lams.var() - 1 / 12) < 0.02  # Beta(1, 1) is uniform
    assert len({tuple(d[1].tolist()) for d in draws}) > 100
    narrow = np.array([blend_draw(s, 6, 20.0)[0] for s in range(400)])  # Beta(20, 20): near 1/2
    assert narrow.var() < lams.var() / 10
    assert blend_draw(7, 6, 0.0)[0] == 1.0


def test_params_are_validated_and_zero_turns_blending_off():
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="blend_alpha"):
            RepBlendConfig(blend_alpha=bad)
    with pytest.raises(ValueError, match="rank"):  # LoRS's own checks still run
        RepBlendConfig(rank=0)
    assert RepBlend(RepBlendConfig(blend_alpha=0.0)).head_inputs() is None
    assert RepBlend(RepBlendConfig()).head_inputs() is not None
    assert get_method("repblend") is RepBlend and RepBlend.Params is RepBlendConfig


# ----------------------------------------------------------------------------- in the matcher

def test_the_heads_get_the_blended_tower_features_and_texts():
    """Frozen tower: one unrolled step with the hook takes the gradient that a step without it
    takes on the blended inputs, computed here by hand from the step's draw."""
    student = build_student(FROZEN, 8, 6, seed=0).double()
    experts = RandomExperts(student, 3, seed=1)
    images, texts = _synthetic()
    cfg = MatchingConfig(syn_steps=2, batch_syn=5)
    blended = TrajectoryMatcher(student, experts, cfg, CPU, head_inputs=representation_blending(1.0))
    plain = TrajectoryMatcher(student, experts, cfg, CPU)
    assert blended.steps.from_features
    features = student.image_features(images).detach()
    theta = blended.layout.flatten(experts.params(0, 0), dtype=torch.float64).requires_grad_(True)
    batch, seed = torch.tensor([1, 4, 6, 8, 9]), 123
    got = blended.steps.gradient(theta, {"images": features, "texts": texts}, batch, seed, create_graph=False)

    lam, perm = blend_draw(seed, 5, 1.0)
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(5))
    mixed_f, mixed_t = features.clone(), texts.clone()
    mixed_f[batch], mixed_t[batch] = blend(features[batch], texts[batch], lam, perm)
    expected = plain.steps.gradient(theta, {"images": mixed_f, "texts": mixed_t}, batch, seed, create_graph=False)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    unblended = plain.steps.gradient(theta, {"images": features, "texts": texts}, batch, seed, create_graph=False)
    assert not torch.allclose(got, unblended)


def test_without_a_frozen_tower_the_blend_is_of_the_tower_output_inside_the_step(env):
    """A trained tower: the hook sees the tower's features under the step's parameters."""
    student = build_student(env.grid.model, env.data.train.resolution, env.data.text_dim, 0).double().eval()
    assert not student.frozen_tower  # (eval: no dropout masks to tell the two forwards apart)
    params = {n: p.detach() for n, p in student.trainable_parameters().items()}
    images, texts = _synthetic(6, env.data.text_dim, env.data.train.resolution)
    hook = representation_blending(1.0)
    got = functional_embed(student, params, images, texts, before_heads=lambda f, t: hook(f, t, torch.arange(6), 5))
    lam, perm = blend_draw(5, 6, 1.0)
    mixed = blend(student.image_features(images), texts, lam, perm)
    expected = functional_embed(student, params, *mixed, from_features=True)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _meta(student, experts, cfg: RepBlendConfig, images, texts, memory: str, segment: int | None = None):
    method = RepBlend(replace(cfg, memory=memory, iterate_segment=segment))
    matcher = TrajectoryMatcher(student, experts, method.params, CPU, inner_loss=method.inner_loss(),
                                head_inputs=method.head_inputs())
    n = images.shape[0]
    gen = torch.Generator().manual_seed(3)
    tensors = {"images": images.clone().requires_grad_(True), "texts": texts.clone().requires_grad_(True),
               "lrs": torch.tensor([0.05, 0.05], dtype=torch.float64, requires_grad=True),
               "sim_diag": torch.ones(n, dtype=torch.float64, requires_grad=True),
               "sim_left": torch.randn(n, cfg.rank, generator=gen, dtype=torch.float64).requires_grad_(True),
               "sim_right": (0.1 * torch.randn(n, cfg.rank, generator=gen, dtype=torch.float64)).requires_grad_(True)}
    return matcher.meta_gradients(tensors, seed=11, it=2)


@pytest.mark.parametrize("tower", ["frozen", "trained"])
@pytest.mark.parametrize("loss", ["wbce", "infonce"])
def test_recompute_replays_the_blend_exactly(env, tower, loss):
    """Unrolled, recompute and recompute with replayed segments give the same loss and
    meta-gradients (images, texts, step sizes, similarity) with blending and dropout on; and
    blending changes them (so it was active)."""
    if tower == "frozen":
        student = build_student(FROZEN, 8, 6, seed=0).double()
        experts = RandomExperts(student, 3, seed=1)
        images, texts = _synthetic()
    else:
        student = build_student(replace(env.grid.model, text_dropout=0.2), env.data.train.resolution,
                                env.data.text_dim, 0).double()
        experts = env.buffer
        images, texts = _synthetic(10, env.data.text_dim, env.data.train.resolution)
    cfg = RepBlendConfig(syn_steps=5, batch_syn=4, max_start_epoch=2, checkpoint_every=0, rank=2, loss=loss,
                         blend_alpha=1.0)
    loss_u, grads_u = _meta(student, experts, cfg, images, texts, "unrolled")
    assert {"images", "texts", "lrs", "sim_diag", "sim_left", "sim_right"} == set(grads_u)
    for memory, segment in (("recompute", None), ("recompute", 2)):
        loss_r, grads_r = _meta(student, experts, cfg, images, texts, memory, segment)
        torch.testing.assert_close(loss_r, loss_u, rtol=1e-10, atol=0)
        for name, g in grads_u.items():
            assert float(g.abs().sum()) > 0, name
            torch.testing.assert_close(grads_r[name], g, rtol=1e-10, atol=1e-10 * float(g.abs().max()),
                                       msg=f"{memory}/{segment} {name}")
    loss_0, grads_0 = _meta(student, experts, replace(cfg, blend_alpha=0.0), images, texts, "unrolled")
    assert not torch.allclose(grads_0["texts"], grads_u["texts"])


# ----------------------------------------------------------------------------- runs

def test_a_run_is_determined_by_its_seed(env):
    student = build_student(env.grid.model, env.data.train.resolution, env.data.text_dim, 0)
    method = RepBlend(RepBlendConfig(iterations=3, syn_steps=3, batch_syn=5, checkpoint_every=0))
    real = env.data.train_pairs(torch.arange(10))
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        matcher = TrajectoryMatcher(student, env.buffer, method.params, CPU, inner_loss=method.inner_loss(),
                                    head_inputs=method.head_inputs())
        runs[name] = matcher.run(method.learned(real, seed=0), seed=seed, key=name).tensors
    for key in ("images", "texts", "sim_right"):
        assert torch.equal(runs["a"][key], runs["b"][key]), key
        assert not torch.equal(runs["a"][key], runs["c"][key]), key


def test_repblend_cells_run_to_ok_records(env):
    params = {"iterations": 3, "syn_steps": 3, "batch_syn": 5, "checkpoint_every": 0, "memory": "recompute"}
    grid = tiny_grid(env.root / "grid", include_full=False, experts=TINY_EXPERTS, budgets=[10], methods=[
        {"name": "repblend", "params": params},
        {"name": "repblend", "label": "repblend-nce", "params": {**params, "loss": "infonce", "blend_alpha": 0.5}}])
    run = GridRun(grid, progress=False).run()
    assert not run.failed and len(run.done) == 2
    recs = records(Path(grid.results_dir))
    assert set(recs) == {"embedded__repblend__b10__s0", "embedded__repblend-nce__b10__s0"}
    for rec in recs.values():
        assert rec["status"] == "ok" and rec["method_name"] == "repblend" and rec["n_pairs"] == 10
        assert rec["method_info"]["soft_targets"]["loss"] in ("wbce", "infonce")
    assert recs["embedded__repblend-nce__b10__s0"]["method_params"]["blend_alpha"] == 0.5
