"""Soft targets end to end, and LoRS as a method file on the open matcher."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bench.core.env import torch_threads
from bench.data.pairs import PairSet, SoftTargets
from bench.distill.matching import TrajectoryMatcher
from bench.grid.runner import GridRun
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.losses import contrastive_loss
from bench.models.student import ModelConfig, build_student
from bench.protocol.train import TrainConfig, train_student
from bench.registry import get_method
from methods.distill.lors import LorsConfig, similarity
from tests.grid_helpers import TINY_EXPERTS as EXPERTS
from tests.grid_helpers import distill_env, tiny_grid

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with torch_threads(1):
        yield distill_env(tmp_path_factory.mktemp("lors"))


# ----------------------------------------------------------------------------- the loss

def _emb(n=6, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1),
            F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1))


def test_identity_targets_give_the_hard_loss():
    img, txt = _emb()
    hard = contrastive_loss(img, txt, 10.0)
    assert float(contrastive_loss(img, txt, 10.0, torch.eye(6, dtype=torch.float64), "infonce")) == pytest.approx(float(hard), rel=1e-12)
    assert float(contrastive_loss(img, txt, 10.0, None, "infonce")) == float(hard)


def test_soft_infonce_and_weighted_bce_against_direct_formulas():
    img, txt = _emb()
    gen = torch.Generator().manual_seed(1)
    targets = torch.eye(6, dtype=torch.float64) + 0.2 * torch.rand(6, 6, generator=gen, dtype=torch.float64)
    logits = (10.0 * img @ txt.T).numpy()
    t = targets.numpy()

    def log_softmax(x):
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    infonce = 0.5 * (-(t * log_softmax(logits)).sum(1).mean() - (t.T * log_softmax(logits.T)).sum(1).mean())
    assert float(contrastive_loss(img, txt, 10.0, targets, "infonce")) == pytest.approx(infonce, rel=1e-10)

    p = 1 / (1 + np.exp(-logits))
    t = np.clip(t, 0, 1)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    pos = t > 0.5
    wbce = 0.5 * (bce[pos].mean() + bce[~pos].mean())
    assert float(contrastive_loss(img, txt, 10.0, targets, "wbce")) == pytest.approx(wbce, rel=1e-10)
    with pytest.raises(ValueError, match="unknown contrastive loss"):
        contrastive_loss(img, txt, 10.0, targets, "mse")


def test_targets_out_of_range_keep_the_losses_bounded():
    """A learned matrix can leave [0, 1]: negative weights would reward pushing a logit down
    without limit. Clipped, the loss of a collapsed or an extreme student stays finite and
    bounded below, and targets in range are left as they are."""
    img, txt = _emb()
    wild = torch.eye(6, dtype=torch.float64) * 3 - 2.0  # diagonal 1, off-diagonal -2
    for kind in ("infonce", "wbce"):
        assert float(contrastive_loss(img, txt, 10.0, wild, kind)) >= 0
        clipped = wild.clamp(0, 1)
        torch.testing.assert_close(contrastive_loss(img, txt, 10.0, wild, kind),
                                   contrastive_loss(img, txt, 10.0, clipped, kind))


def test_unclipped_targets_are_used_as_they_are():
    """clip=False is LoRS's rule: the InfoNCE weights are the raw targets (negative ones too),
    unnormalised; the default (clip=True) is the clipped loss, unchanged."""
    img, txt = _emb()
    gen = torch.Generator().manual_seed(2)
    targets = torch.eye(6, dtype=torch.float64) * 1.3 + 0.4 * torch.randn(6, 6, generator=gen, dtype=torch.float64)
    assert float(targets.min()) < 0 and float(targets.max()) > 1
    logits = 10.0 * img @ txt.T
    raw = 0.5 * (-(targets * F.log_softmax(logits, 1)).sum(1).mean() - (targets.T * F.log_softmax(logits.T, 1)).sum(1).mean())
    unclipped = contrastive_loss(img, txt, 10.0, targets, "infonce", clip=False)
    assert float(unclipped) == pytest.approx(float(raw), rel=1e-12)
    clipped = contrastive_loss(img, txt, 10.0, targets, "infonce")
    assert abs(float(unclipped) - float(clipped)) > 1e-3
    assert float(contrastive_loss(img, txt, 10.0, targets, "infonce", clip=True)) == float(clipped)
    w = targets.clamp_min(0)
    direct = 0.5 * (-(w * F.log_softmax(logits, 1)).sum(1).mean() - (w.T * F.log_softmax(logits.T, 1)).sum(1).mean())
    assert float(clipped) == float(direct)  # today's formula, bit for bit

    per_pair = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))
    pos = targets > 0.5
    wbce = 0.5 * (per_pair[pos].mean() + per_pair[~pos].mean())
    assert float(contrastive_loss(img, txt, 10.0, targets, "wbce", clip=False)) == pytest.approx(float(wbce), rel=1e-12)
    assert float(contrastive_loss(img, txt, 10.0, targets, "wbce", clip=True)) == float(
        contrastive_loss(img, txt, 10.0, targets, "wbce"))
    assert abs(float(wbce) - float(contrastive_loss(img, txt, 10.0, targets, "wbce"))) > 1e-3


def test_soft_targets_must_fit_the_set():
    with pytest.raises(ValueError, match="soft targets"):
        PairSet.synthetic(torch.zeros(3, 3, 4, 4), torch.zeros(3, 2), SoftTargets(torch.eye(2), "wbce"))


# ----------------------------------------------------------------------------- training on soft targets

def _train(targets: SoftTargets | None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    pairs = PairSet.synthetic(torch.randn(8, 3, 8, 8, generator=gen), torch.randn(8, 6, generator=gen), targets)
    student = build_student(ModelConfig(image_encoder=ImageEncoderConfig(width=4, depth=1), text_dropout=0.0), 8, 6, 0)
    train_student(student, pairs, TrainConfig(epochs=3, batch_size=4, lr_image=0.1, lr_text=0.1), 0, CPU)
    return {k: v.detach().clone() for k, v in student.trainable_parameters().items()}


def test_soft_targets_change_the_trained_student_and_the_identity_does_not():
    hard = _train(None)
    same = _train(SoftTargets(torch.eye(8), "infonce"))
    gen = torch.Generator().manual_seed(3)
    soft = _train(SoftTargets(torch.eye(8) + 0.3 * torch.rand(8, 8, generator=gen), "infonce"))
    for name in hard:
        torch.testing.assert_close(same[name], hard[name], rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(soft[n], hard[n], atol=1e-4) for n in hard)


def test_training_honours_the_clip_flag_of_the_targets():
    gen = torch.Generator().manual_seed(4)
    matrix = torch.eye(8) + 0.3 * torch.randn(8, 8, generator=gen)
    assert float(matrix.min()) < 0 and SoftTargets(matrix, "infonce").clip
    clipped = _train(SoftTargets(matrix, "infonce"))
    same = _train(SoftTargets(matrix.clamp_min(0), "infonce"))
    raw = _train(SoftTargets(matrix, "infonce", clip=False))
    for name in clipped:
        torch.testing.assert_close(same[name], clipped[name], rtol=0, atol=0)
    assert any(not torch.allclose(raw[n], clipped[n], atol=1e-4) for n in clipped)


# ----------------------------------------------------------------------------- the method

def _lors(env, **params):
    cfg = LorsConfig(iterations=3, syn_steps=2, batch_syn=5, checkpoint_every=0, **params)
    method = get_method("lors")(cfg)
    student = build_student(env.grid.model, env.data.train.resolution, env.data.text_dim, 0)
    real = env.data.train_pairs(torch.arange(0, 40, 4))
    return cfg, method, student, real


def test_the_similarity_starts_at_the_identity_and_is_low_rank():
    cfg = LorsConfig(rank=3, alpha=2.0)
    n = 7
    gen = torch.Generator().manual_seed(0)
    diag, left, right = torch.rand(n, generator=gen), torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen)
    s = similarity(diag, left, right, cfg.alpha, cfg.rank)
    assert torch.allclose(s - torch.diag(diag), (2.0 / 3) * left @ right.T)
    assert int(torch.linalg.matrix_rank(s - torch.diag(diag))) == 3
    assert torch.equal(similarity(torch.ones(n), left, torch.zeros(n, 3), 2.0, 3), torch.eye(n))


@pytest.mark.parametrize("loss", ["wbce", "infonce"])
def test_gradients_reach_the_similarity_parameters_exactly_in_both_memory_modes(env, loss):
    cfg, method, student, real = _lors(env, loss=loss)
    out = {}
    for memory in ("unrolled", "recompute"):
        matcher = TrajectoryMatcher(student, env.buffer, replace(cfg, memory=memory), CPU, inner_loss=method.inner_loss())
        tensors = matcher.tensors(method.learned(real, seed=0))
        tensors["sim_right"] = (0.1 * torch.randn(tensors["sim_right"].shape, generator=torch.Generator().manual_seed(1))
                                ).requires_grad_(True)  # off the initial zeros, so every factor gets a gradient
        out[memory] = matcher.meta_gradients(tensors, seed=0, it=0)
    grads = out["recompute"][1]
    assert {"sim_diag", "sim_left", "sim_right", "images", "texts", "lrs"} <= set(grads)
    for name in ("sim_diag", "sim_left", "sim_right"):
        g = grads[name]
        assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0, name
        torch.testing.assert_close(g, out["unrolled"][1][name], rtol=1e-4, atol=1e-4 * float(g.abs().max()))


def test_a_run_learns_the_targets_and_returns_them(env):
    cfg, method, student, real = _lors(env)
    matcher = method.matcher(SimpleNamespace(device=CPU), student, env.buffer, None)
    state = matcher.run(method.learned(real, seed=0), seed=0, key="k")
    assert not torch.equal(state.tensors["sim_right"], torch.zeros_like(state.tensors["sim_right"]))
    out = method.output(state, np.arange(10), env.buffer, env.data.text_emb["train"])
    targets = out.pairs.soft_targets
    assert targets is not None and targets.loss == "wbce" and targets.matrix.shape == (10, 10)
    assert not torch.allclose(targets.matrix, torch.eye(10))
    assert out.info["soft_targets"]["loss"] == "wbce" and out.info["soft_targets"]["offdiag_abs_max"] > 0


def test_fixed_identity_lors_with_infonce_is_distill_joint(env):
    """With the low-rank part fixed at zero and the similarity not learned, LoRS's inner loss is
    the hard contrastive loss, so it distils the set distill-joint distils (same seed)."""
    params = {"iterations": 4, "syn_steps": 3, "batch_syn": 5, "checkpoint_every": 0}
    grid = tiny_grid(env.root / "equal", include_full=False, experts=EXPERTS, budgets=[10], methods=[
        {"name": "distill-joint", "params": params},
        {"name": "lors", "params": {**params, "loss": "infonce", "learn_similarity": False}}])
    run = GridRun(grid, progress=False).run()
    assert not run.failed and len(run.done) == 2
    results = Path(grid.results_dir)
    joint = torch.load(results / "sets" / "embedded__distill-joint__b10__s0.pt", weights_only=False)
    lors = torch.load(results / "sets" / "embedded__lors__b10__s0.pt", weights_only=False)
    for key in ("images", "text_emb"):
        torch.testing.assert_close(lors[key], joint[key], rtol=1e-5, atol=1e-6)
    assert joint["soft_targets"] is None and torch.equal(lors["soft_targets"], torch.eye(10))
    assert lors["soft_target_loss"] == "infonce"
    records = {p.stem: json.loads(p.read_text()) for p in (results / "records").glob("*.json")}
    a, b = records["embedded__distill-joint__b10__s0"], records["embedded__lors__b10__s0"]
    assert a["learned_lrs"] == pytest.approx(b["learned_lrs"], rel=1e-5)
    for sa, sb in zip(a["per_seed"], b["per_seed"]):  # trained the same way: the same recall
        assert sa["metrics"] == pytest.approx(sb["metrics"], abs=0.5)


def test_the_soft_target_ablation_splits_the_matrix_into_its_parts():
    from benchmarks.ablate_soft_targets import variants

    gen = torch.Generator().manual_seed(0)
    matrix = torch.eye(5) * 1.5 + 0.1 * torch.randn(5, 5, generator=gen)
    parts = variants(matrix)
    assert parts["identity (hard)"] is None and torch.equal(parts["learned"], matrix)
    diagonal, off = parts["diagonal only"], parts["off-diagonal + unit diagonal"]
    assert torch.equal(diagonal.diagonal(), matrix.diagonal()) and int((diagonal != 0).sum()) == 5
    assert torch.equal(off.diagonal(), torch.ones(5))
    mask = ~torch.eye(5, dtype=torch.bool)
    assert torch.equal(off[mask], matrix[mask])


def test_the_uniform_mass_targets_put_mass_m_off_the_diagonal_of_each_row():
    from benchmarks.ablate_soft_targets import uniform_mass_targets

    targets = uniform_mass_targets(6, [0.0, 0.06, 0.6])
    mask = ~torch.eye(6, dtype=torch.bool)
    for mass, matrix in targets.items():
        assert torch.equal(matrix.diagonal(), torch.ones(6)) and float(matrix.min()) >= 0
        torch.testing.assert_close((matrix * mask).sum(1), torch.full((6,), mass))
    assert torch.equal(targets[0.0], torch.eye(6))
    pattern = (targets[0.6] - torch.eye(6))[mask] / 0.6
    torch.testing.assert_close((targets[0.06] - torch.eye(6))[mask] / 0.06, pattern)  # one pattern for every M
    assert torch.equal(uniform_mass_targets(6, [0.3])[0.3], uniform_mass_targets(6, [0.06, 0.3])[0.3])
    assert not torch.equal(uniform_mass_targets(6, [0.3], seed=1)[0.3], uniform_mass_targets(6, [0.3])[0.3])
