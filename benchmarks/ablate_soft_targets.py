"""Which part of a set's learned similarity targets helps or hurts its evaluation.

Evaluates one saved set (``results/<grid>/sets/<cell>.pt`` of a method with soft targets, e.g.
``lors``) with the grid's evaluation recipe, seeds and learned step sizes, four times: with its
learned targets, with hard targets (the identity), with only their diagonal (per-pair weights),
and with their off-diagonal part over a unit diagonal. Use the val split to diagnose a recipe.

    python benchmarks/ablate_soft_targets.py results/tune/lors-b100/sets/embedded__lors-t00__b100__s0.pt \
        --config configs/embedded_full.yaml --split val
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
    args = parser.parse_args()
    grid = load_grid(args.config, args.set)
    device = pick_device(args.device)
    torch.set_num_threads(grid.runner.cpus_per_task)
    saved = torch.load(args.set_file, weights_only=False, map_location="cpu")
    if saved.get("soft_targets") is None:
        parser.error(f"{args.set_file} has no soft targets (a method without learned similarities made it)")
    data = prepared(grid, args.dataset or grid.datasets[0].name)
    split = data.dataset.split(args.split)
    matrix, loss = saved["soft_targets"].float(), saved["soft_target_loss"]
    print(format_machine())
    print(f"{args.set_file}: {len(matrix)} pairs, loss {loss}; {describe(matrix)}")
    print(f"evaluation: {args.split} split, seeds {list(grid.evaluation.seeds)}, learned step sizes {saved['learned_lrs']}")
    for name, targets in variants(matrix).items():
        pairs = PairSet(saved["images"], saved["image_index"], saved["text_emb"],
                        soft_targets=None if targets is None else SoftTargets(targets, loss))
        results = evaluate_pair_set(pairs, grid.model, grid.evaluation.train, split, data.text_emb[args.split],
                                    tuple(grid.evaluation.seeds), device, saved["learned_lrs"])
        mean = summarize(results)["mean"]
        print(f"{name:<30} mean recall {mean['mean']:6.2f} ± {mean['std']:.2f}", flush=True)


if __name__ == "__main__":
    main()
