"""Which part of a set's learned similarity targets helps or hurts its evaluation.

Evaluates one saved set (``results/<grid>/sets/<cell>.pt`` of a method with soft targets, e.g.
``lors``) with the grid's evaluation recipe, seeds and learned step sizes, four times: with its
learned targets, with hard targets (the identity), with only their diagonal (per-pair weights),
and with their off-diagonal part over a unit diagonal. ``--unclipped`` adds a fifth row: the
learned targets used as they are, LoRS's rule (the suite's losses clip them:
``bench.models.losses``, ``SoftTargets.clip``). Use the val split to diagnose a recipe.

``--uniform-mass M [M ...]`` asks instead what small positive off-diagonal targets cost a set:
its images and texts are kept, its targets replaced by the identity plus M per row spread over
the row's other pairs (one random pattern, ``--pattern-seed``, the same for every M, scaled to
M), trained with ``--loss`` (default: the set's own); hard targets (the InfoNCE of the identity)
are evaluated with them, and M = 0 gives the identity under ``--loss`` (for 'wbce': what the loss
itself costs). This also takes a set without soft targets (e.g. ``distill-joint``).

    python benchmarks/ablate_soft_targets.py results/tune/lors-b100/sets/embedded__lors-t00__b100__s0.pt \
        --config configs/embedded_full.yaml --split val [--unclipped]
    python benchmarks/ablate_soft_targets.py results/<grid>/sets/embedded__distill-joint__b100__s0.pt \
        --config configs/embedded_full.yaml --split val --uniform-mass 0.06 0.3 0.6 --loss infonce

(``--set cache_dir=...`` and other ``KEY.PATH=VALUE`` overrides of the config as in a grid run.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import torch  # noqa: E402

from bench.core.env import format_machine, pick_device  # noqa: E402
from bench.data.pairs import PairSet, SoftTargets  # noqa: E402
from bench.grid.cell import prepared  # noqa: E402
from bench.grid.spec import load_grid  # noqa: E402
from bench.protocol.evaluate import evaluate_pair_set, summarize  # noqa: E402


def variants(matrix: torch.Tensor) -> dict[str, torch.Tensor | None]:
    diagonal = torch.diag(matrix.diagonal())
    return {"learned": matrix, "identity (hard)": None, "diagonal only": diagonal,
            "off-diagonal + unit diagonal": matrix - diagonal + torch.eye(len(matrix))}


def uniform_mass_targets(n: int, masses: list[float], seed: int = 0) -> dict[float, torch.Tensor]:
    """The identity plus, in each row, off-diagonal mass M spread over the row's other pairs by
    one random pattern (uniform draws, normalised to sum 1 per row; the same for every M)."""
    if n < 2:
        raise ValueError("a uniform off-diagonal mass needs at least 2 pairs")
    pattern = torch.rand(n, n, generator=torch.Generator().manual_seed(seed))
    pattern.fill_diagonal_(0)
    pattern = pattern / pattern.sum(1, keepdim=True)
    return {mass: torch.eye(n) + pattern * mass for mass in masses}


def describe(matrix: torch.Tensor) -> str:
    off = matrix - torch.diag(matrix.diagonal())
    mass = off.clamp_min(0).sum(1)
    return (f"diagonal min/mean/max {matrix.diagonal().min():.3f} / {matrix.diagonal().mean():.3f} / "
            f"{matrix.diagonal().max():.3f}; off-diagonal |max| {off.abs().max():.4f}; positive off-diagonal "
            f"mass per row mean {mass.mean():.4f}, max {mass.max():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set_file", help="a set file written by a grid run (sets/<cell>.pt)")
    parser.add_argument("--config", required=True, help="the grid config the set was made with")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the grid's first)")
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--unclipped", action="store_true",
                        help="add a row: the learned targets unclipped (LoRS's rule)")
    parser.add_argument("--uniform-mass", type=float, nargs="+", default=None, metavar="M",
                        help="instead of the four parts: the identity plus off-diagonal mass M per row, for each M")
    parser.add_argument("--loss", choices=["infonce", "wbce"], default=None,
                        help="the loss of the --uniform-mass targets (default: the set's own)")
    parser.add_argument("--pattern-seed", type=int, default=0, help="seed of the --uniform-mass pattern")
    args = parser.parse_args()
    if args.uniform_mass is not None and args.unclipped:
        parser.error("--unclipped ablates the set's learned targets; --uniform-mass replaces them: use one")
    if args.uniform_mass is None and args.loss is not None:
        parser.error("--loss goes with --uniform-mass (the other rows train with the set's own loss)")
    if args.uniform_mass is not None and any(m < 0 for m in args.uniform_mass):
        parser.error("--uniform-mass takes masses >= 0")
    grid = load_grid(args.config, args.set)
    device = pick_device(args.device)
    torch.set_num_threads(grid.runner.cpus_per_task)
    saved = torch.load(args.set_file, weights_only=False, map_location="cpu")
    learned = saved.get("soft_targets")
    if learned is None and args.uniform_mass is None:
        parser.error(f"{args.set_file} has no soft targets (a method without learned similarities made it); "
                     "only --uniform-mass takes such a set")
    loss = args.loss or saved.get("soft_target_loss")
    if loss is None:
        parser.error(f"{args.set_file} has no soft targets: --uniform-mass needs --loss")
    n = len(saved["image_index"])
    rows: dict[str, SoftTargets | None]
    if args.uniform_mass is None:
        matrix = learned.float()
        rows = {name: None if targets is None else SoftTargets(targets, loss)
                for name, targets in variants(matrix).items()}
        if args.unclipped:
            rows["learned, unclipped (LoRS)"] = SoftTargets(matrix, loss, clip=False)
    else:
        rows = {"identity (hard)": None}
        for mass, targets in uniform_mass_targets(n, args.uniform_mass, args.pattern_seed).items():
            rows[f"uniform mass {mass:g} ({loss})"] = SoftTargets(targets, loss)
    data = prepared(grid, args.dataset or grid.datasets[0].name)
    split = data.dataset.split(args.split)
    print(format_machine())
    if learned is None:
        print(f"{args.set_file}: {n} pairs, no soft targets")
    else:
        print(f"{args.set_file}: {n} pairs, loss {saved['soft_target_loss']}; {describe(learned.float())}")
    print(f"evaluation: {args.split} split, seeds {list(grid.evaluation.seeds)}, learned step sizes {saved['learned_lrs']}")
    for name, targets in rows.items():
        pairs = PairSet(saved["images"], saved["image_index"], saved["text_emb"], soft_targets=targets)
        try:
            results = evaluate_pair_set(pairs, grid.model, grid.evaluation.train, split, data.text_emb[args.split],
                                        tuple(grid.evaluation.seeds), device, saved["learned_lrs"])
        except FloatingPointError as exc:
            print(f"{name:<30} diverged: {exc}", flush=True)
            continue
        mean = summarize(results)["mean"]
        print(f"{name:<30} mean recall {mean['mean']:6.2f} ± {mean['std']:.2f}", flush=True)


if __name__ == "__main__":
    main()
