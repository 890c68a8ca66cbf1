"""CovMatch: the cross-covariance loss against a direct computation, the method's runs, and cells."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.env import torch_threads
from bench.data.pairs import normalize_images
from bench.grid.runner import GridRun
from bench.methods_api import MethodContext
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.student import ModelConfig
from bench.registry import get_method
from methods.distill.covmatch import HEADS, CovMatch, CovMatchConfig, covmatch_loss, cross_covariance, fresh_heads
from tests.grid_helpers import records, tiny_grid

CPU = torch.device("cpu")
FROZEN = ModelConfig(image_encoder=ImageEncoderConfig(width=4, depth=2, freeze=True), embed_dim=8)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from bench.grid.cell import prepared

    with torch_threads(1):
        root = tmp_path_factory.mktemp("covmatch")
        grid = tiny_grid(root)
        yield root, grid, prepared(grid, "embedded")


def _ctx(env, model: ModelConfig | None = None) -> MethodContext:
    _, grid, data = env
    return MethodContext(data, model or grid.model, CPU, Path(grid.cache_dir))


# ----------------------------------------------------------------------------- the loss

def _direct(real: tuple[np.ndarray, np.ndarray], syn: tuple[np.ndarray, np.ndarray], w: float,
            center: bool) -> tuple[float, float]:
    """The cross term and the weighted intra term, entry by entry."""

    def cov(a, b):
        n, (dv, dl) = len(a), (a.shape[1], b.shape[1])
        ma = [sum(a[i][p] for i in range(n)) / n for p in range(dv)] if center else [0.0] * dv
        mb = [sum(b[i][q] for i in range(n)) / n for q in range(dl)] if center else [0.0] * dl
        return [[sum((a[i][p] - ma[p]) * (b[i][q] - mb[q]) for i in range(n)) / n for q in range(dl)]
                for p in range(dv)]

    cr, cs = cov(*real), cov(*syn)
    cross = sum((cr[p][q] - cs[p][q]) ** 2 for p in range(len(cr)) for q in range(len(cr[0])))
    intra = 0.0
    for r, s in zip(real, syn):
        for p in range(r.shape[1]):
            intra += (r[:, p].mean() - s[:, p].mean()) ** 2
    return cross, w * intra


@pytest.mark.parametrize("center", [True, False])
def test_the_loss_against_a_direct_computation(center):
    gen = torch.Generator().manual_seed(0)
    real = (torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(7, 2, generator=gen, dtype=torch.float64))
    syn = (torch.randn(4, 3, generator=gen, dtype=torch.float64) + 1.0,
           torch.randn(4, 2, generator=gen, dtype=torch.float64))
    terms = covmatch_loss(real, syn, w_intra=0.7, center=center)
    cross, intra = _direct(tuple(t.numpy() for t in real), tuple(t.numpy() for t in syn), 0.7, center)
    assert cross > 0.1 and intra > 0.1
    assert float(terms["cross"]) == pytest.approx(cross, rel=1e-9)
    assert float(terms["intra"]) == pytest.approx(intra, rel=1e-9)
    assert float(terms["total"]) == pytest.approx(cross + intra, rel=1e-9)


def test_the_cross_covariance_is_of_pairs_and_ignores_their_order():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 3, generator=gen, dtype=torch.float64), torch.randn(6, 4, generator=gen, dtype=torch.float64)
    assert cross_covariance(a, b).shape == (3, 4)
    perm = torch.randperm(6, generator=gen)
    torch.testing.assert_close(cross_covariance(a[perm], b[perm]), cross_covariance(a, b))  # same pairs
    assert not torch.allclose(cross_covariance(a, b[perm]), cross_covariance(a, b))  # other pairs
    # the same set as both sides: nothing to match
    assert float(covmatch_loss((a, b), (a[perm], b[perm]), 1.0)["total"]) == pytest.approx(0.0, abs=1e-24)
    # centring removes a shift of either side, the raw second moment does not
    torch.testing.assert_close(cross_covariance(a + 5.0, b), cross_covariance(a, b))
    assert not torch.allclose(cross_covariance(a + 5.0, b, center=False), cross_covariance(a, b, center=False))


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"batch_real": 1}, {"lr_img": -1.0}, {"lr_txt": float("nan")},
                                 {"w_intra": -0.1}, {"momentum": 1.0}])
def test_params_are_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        CovMatchConfig(**bad)


# ----------------------------------------------------------------------------- the method

def test_fresh_heads_are_a_function_of_their_seed_and_leave_the_tower(env):
    template = _ctx(env).student(0)
    tower = {k: v.detach().clone() for k, v in template.named_parameters() if not k.startswith(HEADS)}
    a, b, c = fresh_heads(template, 5), fresh_heads(template, 5), fresh_heads(template, 6)
    assert set(a) == {k for k, _ in template.named_parameters() if k.startswith(HEADS)} and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].dim() > 1)
    assert all(torch.equal(v, dict(template.named_parameters())[k]) for k, v in tower.items())


def test_a_run_moves_images_and_texts_and_is_determined_by_its_seed(env):
    ctx = _ctx(env)
    method = CovMatch(CovMatchConfig(iterations=4, batch_real=30, lr_img=10.0, lr_txt=1.0))
    a, b, c = method.run(ctx, 10, 0), method.run(ctx, 10, 0), method.run(ctx, 10, 1)
    assert torch.equal(a.pairs.images, b.pairs.images) and torch.equal(a.pairs.text_emb, b.pairs.text_emb)
    assert not torch.equal(a.pairs.images, c.pairs.images)
    start = ctx.real_subset(np.asarray(a.info["init_indices"]))
    assert not torch.allclose(a.pairs.images, normalize_images(start.images[start.image_index]).float())  # moved
    assert not torch.allclose(a.pairs.text_emb, start.text_emb) and len(a.pairs) == 10
    assert len(a.info["loss"]) == 4 and all(math.isfinite(v) for v in a.info["loss"])
    with pytest.raises(ValueError, match="at least 2"):
        method.run(ctx, 1, 0)


def test_the_synthetic_set_moves_towards_the_real_cross_covariance(env, monkeypatch):
    """Under one fixed student (every iteration's generator the same), the loss goes down."""
    ctx = _ctx(env, FROZEN)
    method = CovMatch(CovMatchConfig(iterations=30, batch_real=300, lr_img=10.0, lr_txt=10.0, momentum=0.0))
    real_rng = np.random.default_rng
    # every iteration draws the same heads (and the whole real set, in some order)
    monkeypatch.setattr(np.random, "default_rng", lambda seed=None: real_rng(0 if isinstance(seed, list) else seed))
    out = method.run(ctx, 10, 0)
    monkeypatch.undo()
    loss = out.info["loss"]
    assert loss[-1] < 0.5 * loss[0]


@pytest.mark.parametrize("model", ["trained tower", "frozen tower"])
def test_covmatch_cells_run_to_ok_records(env, model):
    root, _, _ = env
    overrides = {} if model == "trained tower" else {"model": {"image_encoder": {"width": 4, "depth": 2, "freeze": True},
                                                               "embed_dim": 8}}
    grid = tiny_grid(root / model.replace(" ", "-"), include_full=False, budgets=[10],
                     methods=[{"name": "covmatch", "params": {"iterations": 3, "batch_real": 20}}], **overrides)
    run = GridRun(grid, progress=False).run()
    assert not run.failed and len(run.done) == 1
    (rec,) = records(Path(grid.results_dir)).values()
    assert rec["status"] == "ok" and rec["method_name"] == "covmatch" and rec["n_pairs"] == 10
    assert len(rec["method_info"]["loss"]) == 3 and get_method("covmatch") is CovMatch
