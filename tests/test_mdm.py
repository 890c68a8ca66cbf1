"""MDM: k-means initialisation, the merged teacher, the geodesic kernel energy, and the method
run through the plugin API (it is not trajectory matching)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bench.core.env import torch_threads
from bench.distill.experts import ensure_experts
from bench.grid.runner import GridRun
from bench.methods_api import MethodContext
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.student import ModelConfig
from bench.protocol.proxy import compute_proxy
from bench.registry import get_method
from methods.distill.mdm import (
    Mdm,
    MdmConfig,
    draw_checkpoints,
    geodesic_kernel,
    geodesic_kernel_energy,
    kmeans_init,
    mdm_loss,
    merge_checkpoints,
    merge_ratio,
)
from tests.grid_helpers import TINY_EXPERTS, distill_env, records, tiny_grid

CPU = torch.device("cpu")
FROZEN = ModelConfig(image_encoder=ImageEncoderConfig(width=4, depth=2, freeze=True), embed_dim=8)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with torch_threads(1):
        yield distill_env(tmp_path_factory.mktemp("mdm"))


def _ctx(env, model: ModelConfig | None = None) -> MethodContext:
    """The context a cell hands a method: the dataset, the grid's model, its experts and proxy."""
    model = model or env.grid.model
    buffer = ensure_experts(env.data, model, env.cfg, env.base, env.grid.cache_dir, CPU)
    proxy = compute_proxy(env.data, model, env.grid.proxy, env.grid.evaluation.full_train, 0, CPU)
    return MethodContext(env.data, model, CPU, Path(env.grid.cache_dir), lambda: proxy, False, lambda: buffer)


# ----------------------------------------------------------------------------- k-means initialisation

def test_kmeans_init_takes_each_clusters_pair_nearest_its_centroid():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(c, 0.3, size=(40, 5)) for c in (-2.0, 0.0, 2.0, 4.0)])
    picks, centers, labels = kmeans_init(features, 6, seed=3)
    assert len(set(picks.tolist())) == 6 and centers.shape == (6, 5)
    for c in range(6):
        members = np.flatnonzero(labels == c)
        assert labels[picks[c]] == c
        dist = np.linalg.norm(features[members] - centers[c], axis=1)
        assert picks[c] == members[np.argmin(dist)]
        # a centroid is the mean of its cluster (Lloyd's fixed point), not some other point
        np.testing.assert_allclose(centers[c], features[members].mean(axis=0), atol=1e-5)
    again, _, _ = kmeans_init(features, 6, seed=3)
    assert np.array_equal(again, picks)
    others = {tuple(kmeans_init(features, 6, seed=s)[0].tolist()) for s in range(8)}
    assert len(others) > 1  # the seed is used


def test_kmeans_init_gives_distinct_pairs_when_features_repeat():
    features = np.array([[0.0, 0.0]] * 4 + [[1.0, 1.0]] * 3 + [[5.0, 5.0]])
    with pytest.warns(Warning):  # fewer distinct points than clusters
        picks, _, _ = kmeans_init(features, 5, seed=0)
    assert len(set(picks.tolist())) == 5
    with pytest.raises(ValueError, match="k-means"):
        kmeans_init(features, 9, seed=0)


# ----------------------------------------------------------------------------- the mixed teacher

def test_merge_ratio_and_merge_against_a_direct_computation():
    assert merge_ratio(1.0) == pytest.approx(1.0) and merge_ratio(0.0) == 0.0
    assert merge_ratio(0.5) == pytest.approx(2 * 0.5 / 1.5)
    assert merge_ratio(0.5, k=3) == pytest.approx(3 * 0.5 / 2.0)
    anchor = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0, 0.0, 0.0])}
    first = {"w": torch.tensor([2.0, 1.0]), "b": torch.tensor([1.0, 0.0, 0.0])}
    second = {"w": torch.tensor([2.0, 2.0]), "b": torch.tensor([-1.0, 0.0, 0.0])}
    merged, ratios = merge_checkpoints(anchor, first, second, alpha=0.5)
    # w: task vectors (1, 0) and (1, 1): cos = 1/sqrt(2), r = 2c / (c + 1)
    c = 1 / math.sqrt(2)
    r = 2 * c / (c + 1)
    torch.testing.assert_close(merged["w"], torch.tensor([1.0, 1.0]) + 0.5 * r * torch.tensor([1.0, 0.5]))
    # b: opposite task vectors, cos = -1: their mean is the anchor, whatever the (huge) ratio
    torch.testing.assert_close(merged["b"], anchor["b"])
    assert ratios[0] == pytest.approx(r) and len(ratios) == 2
    same, ratios = merge_checkpoints(anchor, first, first, alpha=1.0)  # one model twice: that model
    torch.testing.assert_close(same["w"], first["w"])
    torch.testing.assert_close(same["b"], first["b"])
    still, _ = merge_checkpoints(anchor, anchor, anchor, alpha=1.0)  # nothing moved: the anchor
    assert all(torch.equal(still[k], anchor[k]) for k in anchor)


def test_checkpoint_draws_follow_the_authors_rule():
    draws = [draw_checkpoints(np.random.default_rng([0, i]), 3, 1, 4, same_expert=False) for i in range(300)]
    assert all(0 <= e < 3 and 1 <= p <= 4 for pair in draws for e, p in pair)
    assert all(a != b for a, b in draws)  # never the same checkpoint twice
    assert any(a[0] != b[0] for a, b in draws) and any(a[0] == b[0] for a, b in draws)
    assert {p for pair in draws for _, p in pair} == {1, 2, 3, 4}
    same = [draw_checkpoints(np.random.default_rng([1, i]), 3, 2, 3, same_expert=True) for i in range(50)]
    assert all(a[0] == b[0] and {a[1], b[1]} == {2, 3} for a, b in same)
    assert draws[7] == draw_checkpoints(np.random.default_rng([0, 7]), 3, 1, 4, same_expert=False)


# ----------------------------------------------------------------------------- the loss

def _direct_gke(real: list[list[float]], syn: list[list[float]], sigma: float) -> float:
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    def k(a, b):
        cos = max(-1.0, min(1.0, sum(x * y for x, y in zip(unit(a), unit(b)))))
        return math.exp(-math.acos(cos) ** 2 / (2 * sigma**2))

    def within(s):
        return sum(k(a, b) for i, a in enumerate(s) for j, b in enumerate(s) if i != j) / (len(s) * (len(s) - 1))

    cross = sum(k(a, b) for a in syn for b in real) / (len(syn) * len(real))
    return math.sqrt(max(within(syn) + within(real) - 2 * cross, 0.0))


def test_the_geodesic_kernel_energy_against_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    syn = torch.randn(3, 3, generator=gen, dtype=torch.float64) + torch.tensor([2.5, 0.0, 0.0], dtype=torch.float64)
    for sigma in (0.3, 0.5, 2.0):
        got = float(geodesic_kernel_energy(real, syn, sigma))
        expected = _direct_gke(real.tolist(), syn.tolist(), sigma)
        assert expected > 0.1 and got == pytest.approx(expected, rel=1e-6), sigma
    # the unbiased estimate of the squared MMD can be negative for close sets: clamped at 0
    close = real[:3] + 0.01 * torch.randn(3, 3, generator=gen, dtype=torch.float64)
    assert _direct_gke(real.tolist(), close.tolist(), 0.3) == 0.0
    assert float(geodesic_kernel_energy(real, close, 0.3)) == pytest.approx(1e-6)
    # the kernel is of the angle: scale does not matter, antipodes are at (almost: the cosine
    # is kept 1e-6 inside [-1, 1], where arccos has a finite slope, as the authors do) pi
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    k = geodesic_kernel(a, torch.tensor([[-2.0, 0.0]], dtype=torch.float64), 1.0)
    assert float(k[0, 0]) == pytest.approx(math.exp(-math.acos(-1 + 1e-6) ** 2 / 2), rel=1e-9)
    assert float(k[0, 0]) == pytest.approx(math.exp(-math.pi**2 / 2), rel=1e-2)
    assert float(k[1, 0]) == pytest.approx(math.exp(-(math.pi / 2) ** 2 / 2), rel=1e-9)
    # a set against itself has (almost) no energy; one far from it has a lot
    assert float(geodesic_kernel_energy(real, real, 0.5)) < 0.05 < float(geodesic_kernel_energy(real, -real, 0.5))


def test_the_loss_is_infonce_plus_the_weighted_energies_of_agreement_and_discrepancy():
    gen = torch.Generator().manual_seed(0)
    shifts = [torch.zeros(4), torch.zeros(4), torch.tensor([3.0, 0, 0, 0]), torch.tensor([0, 3.0, 0, 0])]
    emb = [F.normalize(torch.randn(n, 4, generator=gen, dtype=torch.float64) + shift.double(), dim=1)
           for n, shift in zip((5, 5, 4, 4), shifts)]
    real, syn = (emb[0], emb[1]), (emb[2], emb[3])  # synthetic: agreement ~ (1, 1, 0, 0), discrepancy ~ (1, -1, 0, 0)
    cfg = MdmConfig(w_nce=0.7, w_agree=0.3, w_disc=2.0, sigma_agree=0.4, sigma_disc=0.9, logit_scale=5.0)
    terms = mdm_loss(real, syn, cfg)
    logits = 5.0 * syn[0] @ syn[1].T
    nce = 0.5 * (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4)))
    agree = _direct_gke(F.normalize(real[0] + real[1]).tolist(), F.normalize(syn[0] + syn[1]).tolist(), 0.4)
    disc = _direct_gke(F.normalize(real[0] - real[1]).tolist(), F.normalize(syn[0] - syn[1]).tolist(), 0.9)
    assert min(agree, disc) > 0.1
    assert float(terms["nce"]) == pytest.approx(0.7 * float(nce), rel=1e-9)
    assert float(terms["agree"]) == pytest.approx(0.3 * agree, rel=1e-6)
    assert float(terms["disc"]) == pytest.approx(2.0 * disc, rel=1e-6)
    assert float(terms["total"]) == pytest.approx(float(terms["nce"] + terms["agree"] + terms["disc"]))


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"batch_syn": 1}, {"batch_real": 1}, {"lr_img": -1.0},
                                 {"momentum": 1.0}, {"sigma_agree": 0.0}, {"grad_clip": 0.0}, {"merge_alpha": -0.1},
                                 {"min_epoch": 0}, {"min_epoch": 3, "max_epoch": 2}, {"w_disc": float("nan")}])
def test_params_are_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        MdmConfig(**bad)


# ----------------------------------------------------------------------------- the method

def test_a_run_moves_images_and_texts_and_is_determined_by_its_seed(env):
    ctx = _ctx(env)
    method = Mdm(MdmConfig(iterations=4, batch_syn=6, batch_real=30, lr_img=10.0, lr_txt=1.0))
    a, b, c = method.run(ctx, 10, 0), method.run(ctx, 10, 0), method.run(ctx, 10, 1)
    assert torch.equal(a.pairs.images, b.pairs.images) and torch.equal(a.pairs.text_emb, b.pairs.text_emb)
    assert not torch.equal(a.pairs.images, c.pairs.images)
    start = ctx.real_subset(np.asarray(a.info["init_indices"]))
    assert a.info["init_indices"] == kmeans_init(ctx.proxy_features(), 10, 0)[0].tolist()
    assert not torch.allclose(a.pairs.text_emb, start.text_emb) and len(a.pairs) == 10
    assert a.pairs.source_indices is None and a.learned_lrs is None
    assert len(a.info["loss"]) == 4 and all(math.isfinite(v) for v in a.info["loss"])


def test_a_frozen_tower_computes_the_real_features_once_with_the_same_result(env, monkeypatch):
    ctx = _ctx(env, FROZEN)
    method = Mdm(MdmConfig(iterations=3, batch_syn=6, batch_real=30, lr_img=10.0, lr_txt=1.0))
    cached = method.run(ctx, 10, 0)
    student = ctx.student

    def per_iteration(seed):  # the same frozen student, told to run its tower on every batch
        s = student(seed)
        s.frozen_tower = False
        return s

    monkeypatch.setattr(ctx, "student", per_iteration)
    uncached = method.run(ctx, 10, 0)
    torch.testing.assert_close(cached.pairs.images, uncached.pairs.images, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached.pairs.text_emb, uncached.pairs.text_emb, rtol=1e-5, atol=1e-6)


def test_errors_name_what_is_wrong(env):
    ctx = _ctx(env)
    with pytest.raises(ValueError, match="max_epoch"):
        Mdm(MdmConfig(iterations=1, max_epoch=9)).run(ctx, 10, 0)
    with pytest.raises(ValueError, match="two epochs"):
        Mdm(MdmConfig(iterations=1, min_epoch=2, max_epoch=2, same_expert=True)).run(ctx, 10, 0)
    with pytest.raises(ValueError, match="at least 2"):
        Mdm(MdmConfig(iterations=1)).run(ctx, 1, 0)


@pytest.mark.parametrize("model", ["trained tower", "frozen tower"])
def test_mdm_cells_run_to_ok_records(env, model):
    overrides = {} if model == "trained tower" else {"model": {"image_encoder": {"width": 4, "depth": 2, "freeze": True},
                                                               "embed_dim": 8}}
    grid = tiny_grid(env.root / model.replace(" ", "-"), include_full=False, experts=TINY_EXPERTS, budgets=[10],
                     methods=[{"name": "mdm", "params": {"iterations": 5, "batch_syn": 6, "batch_real": 20,
                                                         "lr_txt": 1.0}}], **overrides)
    run = GridRun(grid, progress=False).run()
    assert not run.failed and len(run.done) == 1
    (rec,) = records(Path(grid.results_dir)).values()
    assert rec["status"] == "ok" and rec["method_name"] == "mdm" and rec["n_pairs"] == 10
    assert rec["proxy_seconds"] is not None and rec["expert_seconds"] is not None  # prepared outside its timing
    assert rec["method_params"]["lr_txt"] == 1.0 and len(rec["method_info"]["loss"]) == 5
    assert get_method("mdm") is Mdm and replace(MdmConfig(), iterations=3).iterations == 3


@pytest.mark.parametrize("params, needed", [({"max_epoch": 9}, 9), ({"min_epoch": 6}, 6),
                                            ({"min_epoch": 5, "same_expert": True}, 6)])
def test_experts_too_short_for_the_teacher_are_refused_when_the_grid_loads(params, needed):
    """The grid's load-time check (``Method.expert_epochs_needed``) covers mdm's checkpoints:
    experts of 5 epochs cannot give epoch 9, nor two epochs of one expert from epoch 5 on."""
    from bench.core.config import ConfigError, from_dict
    from bench.grid.spec import GridConfig, validate_methods

    grid = from_dict(GridConfig, {"name": "x", "budgets": [10], "experts": {"epochs": 5},
                                  "methods": [{"name": "mdm", "params": params}]})
    with pytest.raises(ConfigError, match=rf"methods\[0\] \(mdm\)\.params: these parameters read {needed} expert "
                                          r"epochs .* but experts.epochs is 5"):
        validate_methods(grid)
    validate_methods(replace(grid, experts=replace(grid.experts, epochs=needed)))  # long enough: accepted


@pytest.mark.parametrize("method, params, names", [
    ("mdm", {"max_epoch": 9}, "(max_epoch 9)"),
    ("mdm", {"min_epoch": 5, "same_expert": True}, "(min_epoch 5 + 1 for two epochs of one expert (same_expert))"),
    ("distill-joint", {"max_start_epoch": 5, "expert_epochs": 2}, "(max_start_epoch 5 + expert_epochs 2)"),
])
def test_too_short_experts_error_names_the_methods_own_parameters(method, params, names):
    """mdm has no max_start_epoch: its error names max_epoch (or min_epoch), the matcher's its own."""
    from bench.core.config import ConfigError, from_dict
    from bench.grid.spec import GridConfig, validate_methods

    grid = from_dict(GridConfig, {"name": "x", "budgets": [10], "experts": {"epochs": 5},
                                  "methods": [{"name": method, "params": params}]})
    with pytest.raises(ConfigError) as err:
        validate_methods(grid)
    assert names in str(err.value) and "raise experts.epochs to" in str(err.value)
    assert ("max_start_epoch" in str(err.value)) == (method != "mdm")
