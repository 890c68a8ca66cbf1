"""PTM-ST: shortcut trajectories, the EMA of the set, the phases, and cells through the grid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.env import torch_threads
from bench.grid.runner import GridRun
from bench.methods_api import MethodContext
from bench.registry import get_method
from methods.distill.ptm_st import (
    EmaMatcher,
    PtmSt,
    PtmStConfig,
    ShortcutTrajectories,
    phase_sizes,
    shortcut_betas,
    shortcut_point,
)
from tests.grid_helpers import TINY_EXPERTS, distill_env, records, tiny_grid

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")
#: Phases the tiny experts (3 epochs: the matcher reads epochs 0..2) can serve.
TINY = {"iterations": 2, "syn_steps": 2, "batch_syn": 4, "checkpoint_every": 0, "rank": 2, "lr_sim": 1.0,
        "phase_fractions": (0.4, 0.6), "phase_min_start": (0, 0), "phase_max_start": (1, 2), "shortcut_ends": (2, 2)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with torch_threads(1):
        yield distill_env(tmp_path_factory.mktemp("ptm_st"))


def _ctx(env) -> MethodContext:
    return MethodContext(env.data, env.grid.model, CPU, Path(env.grid.cache_dir), None, False, lambda: env.buffer)


# ----------------------------------------------------------------------------- shortcut trajectories

def _trajectory() -> list[dict[str, torch.Tensor]]:
    """Four epochs of two tensors: ``w`` goes around a corner, ``b`` never moves."""
    points = [[0.0, 0.0], [3.0, 0.0], [3.0, 4.0], [6.0, 4.0]]
    return [{"w": torch.tensor(p, dtype=torch.float64), "b": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)}
            for p in points]


def test_shortcut_betas_and_points_against_a_direct_computation():
    traj = _trajectory()
    betas = shortcut_betas(traj)
    # w: steps of length 3, 4, 3 (total 10): beta = 0, 0.3, 0.7, 1
    np.testing.assert_allclose(betas["w"].numpy(), [0.0, 0.3, 0.7, 1.0])
    np.testing.assert_allclose(betas["b"].numpy(), [0.0, 0.0, 0.0, 0.0])  # never moved: stays at epoch 0
    first, last = traj[0], traj[-1]
    for t, beta in enumerate([0.0, 0.3, 0.7, 1.0]):
        point = shortcut_point(first, last, betas, t)
        expected = (1 - beta) * np.array([0.0, 0.0]) + beta * np.array([6.0, 4.0])
        np.testing.assert_allclose(point["w"].numpy(), expected, atol=1e-12)
        torch.testing.assert_close(point["b"], traj[0]["b"])
    # the shortcut is a straight line: epoch 2 is not the recorded corner (3, 4)
    assert not torch.allclose(shortcut_point(first, last, betas, 2)["w"], traj[2]["w"])


class _Buffer:
    """A stand-in expert buffer over given trajectories (counts its reads)."""

    def __init__(self, trajectories: list[list[dict[str, torch.Tensor]]]) -> None:
        self.trajectories, self.epochs, self.key, self.reads = trajectories, len(trajectories[0]) - 1, "k", []

    def __len__(self) -> int:
        return len(self.trajectories)

    def params(self, expert: int, epoch: int) -> dict[str, torch.Tensor]:
        self.reads.append((expert, epoch))
        return self.trajectories[expert][epoch]


def test_shortcut_trajectories_keep_the_ends_and_replace_only_the_segment():
    traj = _trajectory()
    buffer = _Buffer([traj, traj[::-1]])
    short = ShortcutTrajectories(buffer, end=2)
    assert len(short) == 2 and short.epochs == 3 and short.key != buffer.key
    for expert in (0, 1):
        torch.testing.assert_close(short.params(expert, 0)["w"], buffer.trajectories[expert][0]["w"])
        torch.testing.assert_close(short.params(expert, 2)["w"], buffer.trajectories[expert][2]["w"])
        torch.testing.assert_close(short.params(expert, 3)["w"], buffer.trajectories[expert][3]["w"])  # outside
    # segment 0..2 of expert 0: steps 3 and 4 -> epoch 1 at 3/7 of the way from (0, 0) to (3, 4)
    np.testing.assert_allclose(short.params(0, 1)["w"].numpy(), [3 * 3 / 7, 4 * 3 / 7])
    reads = len(buffer.reads)
    short.params(0, 1)
    assert len(buffer.reads) == reads  # the segment is read once
    with pytest.raises(ValueError, match="shortcut_ends 4"):
        ShortcutTrajectories(buffer, end=4)


# ----------------------------------------------------------------------------- phases and parameters

def test_phase_sizes_follow_the_fractions_and_the_last_takes_the_rest():
    assert phase_sizes(500, (0.4, 0.6)) == [200, 300]
    assert phase_sizes(10, (0.5, 0.5)) == [5, 5]
    assert phase_sizes(7, (1 / 3, 1 / 3, 1 / 3)) == [2, 2, 3]
    assert phase_sizes(9, (1.0,)) == [9]


@pytest.mark.parametrize("bad, match", [
    ({"phase_fractions": (0.5, 0.6)}, "sum to 1"),
    ({"phase_fractions": (0.5, 0.5), "phase_min_start": (0,)}, "one entry per phase"),
    ({"phase_min_start": (2, 1)}, "start window"),
    ({"shortcut_ends": (1, 7)}, "shortcut_ends 1 must reach"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"iterations": 10, "snapshots": (5,)}, "no snapshots"),
])
def test_params_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        PtmStConfig(**bad)
    assert PtmStConfig(shortcut=False, shortcut_ends=(0, 0)).last_epoch == 3  # ends unread without shortcut


def test_the_experts_must_cover_the_phases_and_their_shortcuts():
    assert PtmSt.expert_epochs_needed(PtmStConfig()) == 8  # the authors' 0..7 segment
    assert PtmSt.expert_epochs_needed(PtmStConfig(shortcut=False)) == 4  # start < 3, + 1 epoch
    assert "shortcut_ends [5, 7]" in PtmSt.expert_epochs_reason(PtmStConfig())
    params = PtmStConfig(rank=3)
    assert PtmSt.budget_problem(params, 4, None) is not None  # phases of 1 and 3 pairs
    assert "rank 3" in PtmSt.budget_problem(params, 6, None)  # phases of 2 and 4 pairs
    assert PtmSt.budget_problem(params, 10, None) is None


# ----------------------------------------------------------------------------- the EMA

def test_the_ema_is_the_exponential_average_of_the_iterates(env):
    """An EMA of decay d over a run equals d^k x_0 + (1 - d) sum_j d^(k-j) x_j, the x_j read from
    runs of j iterations (a run is determined by its seed)."""
    d, k = 0.6, 3
    method = PtmSt(PtmStConfig(**TINY, ema_decay=d))
    real = env.data.train_pairs(torch.arange(6))
    phase = replace(method.params.phase(0), iterations=k)

    def run(iterations: int):
        student = _ctx(env).student(0)
        matcher = EmaMatcher(student, ShortcutTrajectories(env.buffer, 2), replace(phase, iterations=iterations), CPU,
                             inner_loss=method.inner_loss(), ema_decay=d)
        return matcher.run(method.learned(real, seed=0), seed=0, key=str(iterations)).tensors

    iterates = [method.learned(real, seed=0)["images"].value] + [run(j)["images"] for j in range(1, k + 1)]
    final = run(k)
    expected = d**k * iterates[0] + (1 - d) * sum(d ** (k - j) * iterates[j] for j in range(1, k + 1))
    torch.testing.assert_close(final["ema_images"], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(final["ema_images"], final["images"])  # the average lags the last iterate
    for name in ("texts", "sim_right", "lrs"):
        assert f"ema_{name}" in final


# ----------------------------------------------------------------------------- the method

def test_a_run_concatenates_the_phases_and_is_determined_by_its_seed(env):
    ctx = _ctx(env)
    method = PtmSt(PtmStConfig(**TINY))
    a, b, c = method.run(ctx, 10, 0), method.run(ctx, 10, 0), method.run(ctx, 10, 1)
    assert torch.equal(a.pairs.images, b.pairs.images) and not torch.equal(a.pairs.images, c.pairs.images)
    assert len(a.pairs) == 10 and a.info["phase_sizes"] == [4, 6] and a.info["iterations"] == 4
    matrix = a.pairs.soft_targets.matrix
    assert matrix.shape == (10, 10)
    assert torch.all(matrix[:4, 4:] == 0) and torch.all(matrix[4:, :4] == 0)  # block-diagonal: phases apart
    assert a.learned_lrs == {"image": a.info["phase_learned_lrs"][1][0], "text": a.info["phase_learned_lrs"][1][1]}
    start = ctx.real_subset(np.asarray(a.info["init_indices"]))
    assert not torch.allclose(a.pairs.text_emb, start.text_emb)


def test_without_shortcut_the_phases_read_their_own_windows(env):
    """Each phase draws start epochs from its window only (recorded trajectories, no shortcut)."""
    buffer = _Buffer([[env.buffer.params(e, p) for p in range(env.buffer.epochs + 1)] for e in range(len(env.buffer))])
    buffer.size_bytes = lambda: 0
    ctx = MethodContext(env.data, env.grid.model, CPU, Path(env.grid.cache_dir), None, False, lambda: buffer)
    params = {**TINY, "iterations": 6, "phase_min_start": (0, 1), "phase_max_start": (1, 2), "shortcut": False}
    PtmSt(PtmStConfig(**params)).run(ctx, 10, 0)
    assert {epoch for _, epoch in buffer.reads} == {0, 1, 2}
    params["phase_min_start"], params["phase_max_start"] = (0, 0), (1, 1)
    buffer.reads.clear()
    PtmSt(PtmStConfig(**params)).run(ctx, 10, 0)
    assert {epoch for _, epoch in buffer.reads} == {0, 1}  # a window [0, 1) never reads epoch 2


def test_ptm_st_cells_run_to_ok_records(env):
    params = {**TINY, "phase_fractions": [0.4, 0.6], "phase_min_start": [0, 0], "phase_max_start": [1, 2],
              "shortcut_ends": [2, 2]}
    grid = tiny_grid(env.root / "grid", include_full=False, experts=TINY_EXPERTS, budgets=[10],
                     methods=[{"name": "ptm-st", "params": params}])
    run = GridRun(grid, progress=False).run()
    assert not run.failed and len(run.done) == 1
    (rec,) = records(Path(grid.results_dir)).values()
    assert rec["status"] == "ok" and rec["method_name"] == "ptm-st" and rec["n_pairs"] == 10
    assert rec["method_info"]["phase_sizes"] == [4, 6] and rec["method_params"]["ema_decay"] == 0.99
    assert get_method("ptm-st") is PtmSt
