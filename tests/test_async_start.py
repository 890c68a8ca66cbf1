"""Asynchronous start epochs (AMD, ICLR 2026): the text side's own start range in trajectory matching.

Unset, nothing changes (the same draws, the same results, the same cell hashes and run keys);
set, the text head starts from, and is matched to, its own expert epochs. The tiny embedded
grid's two experts record epochs 0..3 (``TINY_EXPERTS``), trained once for the module.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.core.config import ConfigError, to_dict
from bench.core.env import torch_threads
from bench.core.io import stable_hash
from bench.distill.matching import MatchingConfig, TrajectoryMatcher, run_key
from bench.distill.unroll import unrolled_meta_gradients
from bench.grid.spec import load_grid
from bench.models.student import build_student
from bench.registry import get_method
from bench.trajectory_api import synthetic_start
from methods.distill.ptm_st import PtmStConfig
from tests.grid_helpers import distill_env
from tests.test_user_errors import QUICKSTART

CPU = torch.device("cpu")
# Image side from epoch 0, text side from epoch 1: every iteration reads both.
SPLIT = {"min_start_epoch": 0, "max_start_epoch": 1, "text_min_start_epoch": 1, "text_max_start_epoch": 2}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with torch_threads(1):
        yield distill_env(tmp_path_factory.mktemp("async_start"))


def _student(env):
    return build_student(env.grid.model, env.data.train.resolution, env.data.text_dim, 0)


def _matcher(env, cfg: MatchingConfig) -> TrajectoryMatcher:
    return TrajectoryMatcher(_student(env), env.buffer, cfg, CPU)


def _learned(env, cfg: MatchingConfig, n: int = 10):
    indices = np.sort(np.random.default_rng(0).choice(env.data.train.n_captions, size=n, replace=False))
    return synthetic_start(env.data.train_pairs(torch.as_tensor(indices)), cfg, True, True)


def _cfg(**changes) -> MatchingConfig:
    return MatchingConfig(**{"iterations": 3, "syn_steps": 2, "batch_syn": 5, "checkpoint_every": 0, **changes})


# ----------------------------------------------------------------------------- unset: nothing changes

def test_the_draws_of_an_iteration_do_not_move(env):
    """The expert, the image start epoch, the batches and the step seeds come from the (seed,
    it) generator in the order they always did; a text range adds a draw from a generator of
    its own, so the plan is the same with and without it."""
    sync = _matcher(env, _cfg(max_start_epoch=2))
    both = _matcher(env, _cfg(max_start_epoch=2, text_min_start_epoch=0, text_max_start_epoch=2))
    for it in range(8):
        rng = np.random.default_rng([7, it])
        expert, epoch = int(rng.integers(len(env.buffer))), int(rng.integers(0, 2))
        a, b = sync.plan(10, 7, it), both.plan(10, 7, it)
        assert a[:2] == b[:2] == (expert, epoch)
        assert a[2].seeds == b[2].seeds and all(torch.equal(x, y) for x, y in zip(a[2].batches, b[2].batches))
        assert sync.text_start_epoch(7, it, epoch) == epoch  # unset: the image side's epoch


def test_a_text_range_equal_to_the_image_epoch_gives_the_synchronous_run_bitwise(env):
    """With both ranges one and the same epoch, the asynchronous run is the synchronous one, bit
    for bit: the extra draw perturbs nothing and the endpoints are the same vectors."""
    sync_cfg = _cfg(min_start_epoch=1, max_start_epoch=2)
    async_cfg = replace(sync_cfg, text_min_start_epoch=1, text_max_start_epoch=2)
    learned = _learned(env, sync_cfg)
    sync = _matcher(env, sync_cfg).run(learned, seed=4, key="sync")
    other = _matcher(env, async_cfg).run(learned, seed=4, key="async")
    assert sync.losses == other.losses
    for name in ("images", "texts", "lrs"):
        assert torch.equal(sync.tensors[name], other.tensors[name]), name


def test_unset_keys_leave_hashes_and_run_keys_as_they_were():
    cfg = MatchingConfig()
    assert "text_min_start_epoch" not in to_dict(cfg) and "text_max_start_epoch" not in to_dict(cfg)
    assert run_key(cfg, 3) == stable_hash([str(cfg), "3"])  # the key's definition before the text range
    with_range = replace(cfg, text_max_start_epoch=3)
    assert to_dict(with_range)["text_max_start_epoch"] == 3
    assert run_key(with_range, 3) != run_key(cfg, 3)  # kept out of the repr, but not out of the key


# ----------------------------------------------------------------------------- set: the text side's own epochs

def test_the_text_head_starts_and_ends_at_its_own_epochs(env):
    cfg = _cfg(**SPLIT)
    matcher = _matcher(env, cfg)
    student = _student(env)
    assert {matcher.text_start_epoch(0, it, 0) for it in range(10)} == {1}
    start, target = matcher.endpoints(1, 0, 1)
    got_start, got_target = matcher.layout.unflatten(start), matcher.layout.unflatten(target)
    sides = {student.modality_of(n) for n in got_start}
    assert sides == {"image", "text"}
    for name in got_start:
        epoch = 0 if student.modality_of(name) == "image" else 1
        assert torch.equal(got_start[name], env.buffer.params(1, epoch)[name]), name
        assert torch.equal(got_target[name], env.buffer.params(1, epoch + cfg.expert_epochs)[name]), name


def test_the_matching_loss_uses_both_epochs(env):
    """The iteration's loss and meta-gradients are those of the unrolled steps from the
    composed start to the composed target, computed here from the buffer's named tensors."""
    cfg = _cfg(**SPLIT)
    matcher = _matcher(env, cfg)
    student = _student(env)
    tensors = matcher.tensors(_learned(env, cfg))
    loss, grads = matcher.meta_gradients(tensors, seed=2, it=0)

    expert, image_epoch, plan = matcher.plan(10, 2, 0)
    assert image_epoch == 0

    def composed(offset: int) -> torch.Tensor:
        """Each named tensor from its side's epoch (image 0, text 1) + ``offset``."""
        epoch = {n: (0 if student.modality_of(n) == "image" else 1) + offset for n in matcher.layout.names}
        return matcher.layout.flatten({n: env.buffer.params(expert, e)[n] for n, e in epoch.items()},
                                      dtype=matcher.dtype)

    with torch.random.fork_rng(devices=[]):
        expected, expected_grads = unrolled_meta_gradients(matcher.steps, composed(0), composed(cfg.expert_epochs),
                                                           tensors, plan)
    assert torch.equal(loss, expected)
    assert grads.keys() == expected_grads.keys() and all(torch.equal(grads[k], expected_grads[k]) for k in grads)
    sync_loss, _ = _matcher(env, _cfg(max_start_epoch=1)).meta_gradients(tensors, seed=2, it=0)
    assert float(sync_loss) != float(loss)  # the text side's epoch did change the problem


def test_text_start_epochs_are_drawn_from_their_range_by_the_seed(env):
    matcher = _matcher(env, _cfg(max_start_epoch=1, text_min_start_epoch=0, text_max_start_epoch=2))
    draws = [matcher.text_start_epoch(3, it, 0) for it in range(40)]
    assert set(draws) == {0, 1}  # independent of the image side's (always 0 here)
    assert draws == [matcher.text_start_epoch(3, it, 0) for it in range(40)]  # deterministic
    assert draws != [matcher.text_start_epoch(4, it, 0) for it in range(40)]  # and a function of the seed


# ----------------------------------------------------------------------------- ranges, epochs needed, errors

@pytest.mark.parametrize("changes, key", [
    ({"text_min_start_epoch": 2, "text_max_start_epoch": 2},
     "text_min_start_epoch must be in [0, text_max_start_epoch = 2)"),
    ({"text_min_start_epoch": -1}, "text_min_start_epoch must be in [0, max_start_epoch = 2)"),
    ({"text_min_start_epoch": 2}, "text_min_start_epoch must be in [0, max_start_epoch = 2)"),
    ({"text_max_start_epoch": 0}, "text_max_start_epoch must be >= 1"),
    ({"min_start_epoch": 1, "text_max_start_epoch": 1}, "text_max_start_epoch must be > min_start_epoch = 1"),
])
def test_bad_text_ranges_are_one_line_errors_naming_the_key(changes, key):
    with pytest.raises(ValueError) as err:
        MatchingConfig(max_start_epoch=2, **changes)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_expert_epochs_needed_cover_the_text_range(env):
    cls = get_method("distill-joint")
    assert cls.expert_epochs_needed(MatchingConfig(max_start_epoch=2)) == 3
    assert cls.expert_epochs_needed(MatchingConfig(max_start_epoch=2, text_max_start_epoch=1)) == 3
    wide = MatchingConfig(max_start_epoch=2, text_min_start_epoch=3, text_max_start_epoch=4, expert_epochs=2)
    assert cls.expert_epochs_needed(wide) == 6 and cls.expert_epochs_reason(wide) == \
        "text_max_start_epoch 4 + expert_epochs 2"
    assert wide.epochs_read == {0, 1, 2, 3, 5}  # image: 0, 1 -> 2, 3; text: 3 -> 5
    with pytest.raises(ValueError, match=r"^text_max_start_epoch 3 \+ expert_epochs 1 exceeds the 3 recorded"):
        _matcher(env, MatchingConfig(max_start_epoch=1, text_max_start_epoch=3))


def test_the_grid_refuses_a_text_range_its_experts_do_not_record():
    setting = "methods.4.params.text_max_start_epoch=9"
    with pytest.raises(ConfigError) as err:
        load_grid(QUICKSTART, [setting])
    assert str(err.value).startswith(f"--set {setting!r}: methods[4] (distill-joint).params: these parameters read "
                                     "10 expert epochs (text_max_start_epoch 9 + expert_epochs 1), but experts.epochs "
                                     "is 5"), str(err.value)
    with pytest.raises(ConfigError, match=r"methods\[4\] \(distill-joint\)\.params.*text_min_start_epoch must be"):
        load_grid(QUICKSTART, ["methods.4.params.text_min_start_epoch=-1"])


def test_ptm_st_refuses_a_text_range():
    with pytest.raises(ValueError, match="text_min_start_epoch / text_max_start_epoch are not supported"):
        PtmStConfig(text_max_start_epoch=2)
