"""Time one trajectory-matching iteration as syn_steps grows, against plain training steps.

One iteration is what ``TrajectoryMatcher.run`` does per step: the unrolled forward
(``syn_steps`` differentiable SGD steps of the student on mini-batches of the synthetic set,
``create_graph=True``), the meta-gradient backward to the images, texts and step sizes, and the
optimiser step. It is compared with ``syn_steps`` plain training steps on mini-batches of the
same size (forward + backward + in-place SGD update, no graph kept), so the ratio is the price
of differentiating through training. The model is the quickstart student (configs/quickstart.yaml:
ConvNet-D3 width 64 at 32 px, residual text head over 384-d MiniLM vectors); the synthetic set,
the text vectors and the one "expert" (a fresh student and that student plus noise) are random,
so no data or expert training is needed: the cost does not depend on the values.

Torch uses the config's ``runner.cpus_per_task`` threads unless ``--threads`` says otherwise,
as a grid cell does (more threads than idle cores makes OpenMP spin and times explode).

Peak memory of an iteration: the process's resident-set peak minus its size just before
(``bench.measure.measure``; freed heap memory is handed back to the OS first, so each iteration
starts from a clean baseline), plus the allocator's peak on CUDA.

LoRA matching (``--tower vit``): the same student with a pretrained-style ViT tower (random
weights saved to a temp directory and loaded like a local checkpoint; the config's text head)
matched two ways: full-parameter (every tower weight is trainable, recorded and unrolled) and
LoRA (the tower frozen, rank-r adapters on the query/value projections). Per variant:
trainable parameters, expert buffer bytes (one recorded epoch as safetensors, and the buffer
of a paper-sized run: 20 experts x (start + 3 epochs)), iteration wall time against plain
steps, and peak memory.

    python benchmarks/bench_distill.py                        # syn_steps 2 4 8 16, batch 50 of 100
    python benchmarks/bench_distill.py --syn-steps 8 32 --device cuda
    python benchmarks/bench_distill.py --tower vit            # ViT-Tiny shape: hidden 192, 12 layers, patch 8, 32 px
    python benchmarks/bench_distill.py --tower vit --vit-hidden 384 --vit-layers 12 --vit-patch 16 --vit-resolution 64
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from anywhere

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from bench.env import format_machine, pick_device  # noqa: E402
from bench.grid import load_grid  # noqa: E402
from bench.matching import MatchingConfig, TrajectoryMatcher  # noqa: E402
from bench.measure import Cost, measure  # noqa: E402
from bench.models.student import ModelConfig, Student, build_student, contrastive_loss  # noqa: E402
from benchmarks._towers import add_vit_arguments, describe_vit, tower_models  # noqa: E402

TEXT_DIM = 384  # all-MiniLM-L6-v2, the quickstart text encoder


class RandomExperts:
    """Stands in for a :class:`bench.experts.TrajectoryBuffer`: one expert whose epoch 0 is a
    fresh student and whose epoch e is that plus e small Gaussian steps. Like the real buffer
    (which reads the file on every call) it hands out fresh tensors each time."""

    key = "random-experts"

    def __init__(self, student: Student, epochs: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        current = {n: p.detach().cpu().clone() for n, p in student.trainable_parameters().items()}
        self._epochs = [current]
        for _ in range(epochs):
            current = {n: t + 0.01 * t.std().clamp_min(1e-3) * torch.randn(t.shape, generator=gen)
                       for n, t in current.items()}
            self._epochs.append(current)
        self.epochs = epochs

    def __len__(self) -> int:
        return 1

    def params(self, expert: int, epoch: int) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in self._epochs[epoch].items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def _release_freed_memory(device: torch.device) -> None:
    """Return freed heap pages to the OS, so the next RSS baseline excludes them."""
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _seconds(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _memory(fn: Callable[[], None], device: torch.device) -> Cost:
    """One call from a clean baseline (a separate call: the page faults of memory handed back
    to the OS would otherwise be timed, which a long run with a warm allocator does not pay)."""
    _release_freed_memory(device)
    with measure(device, interval=0.01) as cost:
        fn()
        _sync(device)
    return cost


def bench_syn_steps(args: argparse.Namespace, syn_steps: int, student: Student, experts: RandomExperts,
                    device: torch.device) -> dict[str, float]:
    cfg = replace(args.matching, syn_steps=syn_steps)
    matcher = TrajectoryMatcher(student, experts, cfg, True, True, device)
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.n_syn, 3, args.resolution, args.resolution, generator=gen).to(device)
    texts = F.normalize(torch.randn(args.n_syn, TEXT_DIM, generator=gen), dim=1).to(device)
    images.requires_grad_(True)
    texts.requires_grad_(True)
    lrs = torch.full((2,), cfg.syn_lr_init, device=device, requires_grad=True)
    opt = matcher._optimizer(images, texts, lrs)
    counter = iter(range(10**9))

    def iteration() -> None:  # the body of TrajectoryMatcher.run's loop
        loss = matcher.iteration(images, texts, lrs, args.seed, next(counter))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            lrs.clamp_(min=0.0)

    # Plain training of a student from the same start on mini-batches of the same size.
    plain = build_student(args.model, args.resolution, TEXT_DIM, args.seed).to(device).train()
    with torch.no_grad():
        for name, p in plain.trainable_parameters().items():
            p.copy_(experts.params(0, 0)[name].to(device))
    side = {n: 0 if plain.modality_of(n) == "image" else 1 for n in plain.trainable_parameters()}
    step_lrs = lrs.detach().tolist()
    batch = min(cfg.batch_syn or args.n_syn, args.n_syn)

    def plain_steps() -> None:
        order = torch.cat([torch.randperm(args.n_syn, generator=gen)
                           for _ in range(-(-syn_steps * batch // args.n_syn))])
        x, t = images.detach(), texts.detach()
        for step in range(syn_steps):
            idx = order[step * batch:(step + 1) * batch].to(device)
            img_emb, txt_emb = plain(x[idx], t[idx])
            loss = contrastive_loss(img_emb, txt_emb, cfg.inner_logit_scale)
            plain.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for name, p in plain.named_parameters():
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-step_lrs[side[name]])

    iteration()  # warm-up (first-call allocations, kernel selection)
    plain_steps()
    iter_times, plain_times = [], []
    for _ in range(args.repeats):
        iter_times.append(_seconds(iteration, device))
        plain_times.append(_seconds(plain_steps, device))
    cost = _memory(iteration, device)
    it_s, plain_s = statistics.median(iter_times), statistics.median(plain_times)
    out = {"syn_steps": syn_steps, "iteration_s": it_s, "plain_s": plain_s, "ratio": it_s / plain_s,
           "rss_mb": cost.peak_rss_mb - cost.baseline_rss_mb}
    if cost.peak_cuda_mb is not None:
        out["cuda_mb"] = cost.peak_cuda_mb
    return out


def _param_counts(student: Student) -> tuple[int, int]:
    params = student.trainable_parameters()
    n_img = sum(p.numel() for n, p in params.items() if student.modality_of(n) == "image")
    n_txt = sum(p.numel() for n, p in params.items() if student.modality_of(n) == "text")
    return n_img, n_txt


def _expert_bytes(student: Student, snapshots: int) -> tuple[int, int]:
    """(one recorded epoch, one expert file of ``snapshots`` epochs) as safetensors bytes, keyed
    as bench.experts writes them."""
    from safetensors.torch import save

    params = {n: p.detach().cpu().contiguous() for n, p in student.trainable_parameters().items()}
    one = len(save({f"000/{n}": t for n, t in params.items()}))
    file = len(save({f"{e:03d}/{n}": t.clone() for e in range(snapshots) for n, t in params.items()}))
    return one, file


def run_tower(args: argparse.Namespace, grid_model: ModelConfig, device: torch.device) -> None:
    snapshots = 1 + args.paper_epochs
    args.resolution = args.vit_resolution
    with tempfile.TemporaryDirectory(prefix="bench-vit-") as tmp:
        models = tower_models(args, grid_model, Path(tmp) / "vit")
        print(format_machine())
        print(f"device {device}; {describe_vit(args)}; {grid_model.text_head} text head {TEXT_DIM} -> {grid_model.embed_dim or args.vit_hidden}; "
              f"LoRA on q_proj/v_proj, alpha 2r, dropout 0")
        print(f"synthetic set {args.n_syn} pairs, batch_syn {args.batch_syn}; median of {args.repeats} "
              f"(after 1 warm-up), memory of one more iteration; plain = syn_steps SGD steps without create_graph")
        print(f"buffer = {args.paper_experts} experts x {snapshots} recorded epochs (start + {args.paper_epochs})")
        header = (f"{'matching':<9}  {'image params':>12}  {'text params':>11}  {'MiB/epoch':>9}  {'buffer MiB':>10}  "
                  f"{'syn_steps':>9}  {'iteration s':>11}  {'plain s':>7}  {'ratio':>5}  {'peak RSS +MiB':>13}")
        if device.type == "cuda":
            header += f"  {'peak CUDA MiB':>13}"
        print(header)
        rows: dict[str, list[dict[str, float]]] = {}
        for label, model in models.items():
            args.model = model
            student = build_student(model, args.resolution, TEXT_DIM, args.seed)
            n_img, n_txt = _param_counts(student)
            per_epoch, per_expert = _expert_bytes(student, snapshots)
            buffer = per_expert * args.paper_experts
            experts = RandomExperts(student, args.matching.max_start_epoch + args.matching.expert_epochs, args.seed + 1)
            for syn_steps in args.syn_steps:
                r = bench_syn_steps(args, syn_steps, student, experts, device)
                r.update(per_epoch=per_epoch, buffer=buffer, n_img=n_img)
                rows.setdefault(label, []).append(r)
                line = (f"{label:<9}  {n_img:>12,}  {n_txt:>11,}  {per_epoch / 2**20:>9.3f}  {buffer / 2**20:>10.1f}  "
                        f"{syn_steps:>9}  {r['iteration_s']:>11.3f}  {r['plain_s']:>7.3f}  {r['ratio']:>5.1f}  "
                        f"{r['rss_mb']:>13.1f}")
                if "cuda_mb" in r:
                    line += f"  {r['cuda_mb']:>13.1f}"
                print(line, flush=True)
        (full_label, full), (lora_label, lora) = rows.items()
        for f, lo in zip(full, lora):
            print(f"{lora_label} / full at syn_steps {f['syn_steps']}: trainable image params x{lo['n_img'] / f['n_img']:.4f}, "
                  f"expert bytes x{lo['per_epoch'] / f['per_epoch']:.4f}, iteration time x{lo['iteration_s'] / f['iteration_s']:.2f}, "
                  f"peak RSS growth x{lo['rss_mb'] / max(f['rss_mb'], 1e-9):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower", choices=["config", "vit"], default="config",
                        help="config: the config's student at several syn_steps; vit: full-parameter vs LoRA "
                             "matching of one ViT tower")
    parser.add_argument("--syn-steps", type=int, nargs="+", default=None,
                        help="default 2 4 8 16 (--tower config), 4 8 (--tower vit)")
    parser.add_argument("--batch-syn", type=int, default=None, help="default 50 (config), 20 (vit)")
    parser.add_argument("--n-syn", type=int, default=None, help="pairs in the synthetic set; default 100 (config), 40 (vit)")
    parser.add_argument("--repeats", type=int, default=3)
    add_vit_arguments(parser)
    vit = parser.add_argument_group("--tower vit buffer size")
    vit.add_argument("--paper-experts", type=int, default=20, help="experts of the buffer size reported")
    vit.add_argument("--paper-epochs", type=int, default=3, help="recorded epochs per expert (plus the start)")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"),
                        help="grid whose model and (first) dataset resolution are used")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the config's runner.cpus_per_task, what a cell gets)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    vit_mode = args.tower == "vit"
    args.syn_steps = args.syn_steps or ([4, 8] if vit_mode else [2, 4, 8, 16])
    args.batch_syn = args.batch_syn or (20 if vit_mode else 50)
    args.n_syn = args.n_syn or (40 if vit_mode else 100)
    if vit_mode and (args.vit_hidden % args.vit_heads or args.vit_resolution % args.vit_patch):
        parser.error("--vit-hidden must be divisible by --vit-heads and --vit-resolution by --vit-patch")
    if args.n_syn < 2 or args.batch_syn < 2 or args.repeats < 1 or min(args.syn_steps) < 1:
        parser.error("--n-syn and --batch-syn must be >= 2, --repeats and every --syn-steps >= 1")
    device = pick_device(args.device)
    grid = load_grid(args.config)
    torch.set_num_threads(args.threads or grid.runner.cpus_per_task)
    args.model = grid.model
    args.resolution = grid.datasets[0].embedded.resolution if grid.datasets[0].source == "embedded" else 32
    args.matching = MatchingConfig(batch_syn=args.batch_syn, checkpoint_every=0)
    if vit_mode:
        run_tower(args, grid.model, device)
        return 0
    student = build_student(args.model, args.resolution, TEXT_DIM, args.seed)
    experts = RandomExperts(student, args.matching.max_start_epoch + args.matching.expert_epochs, args.seed + 1)
    n_img, n_txt = _param_counts(student)
    enc = args.model.image_encoder
    print(format_machine())
    print(f"device {device}; model {enc.name} width {enc.width} depth {enc.depth} at {args.resolution} px, "
          f"{args.model.text_head} text head {TEXT_DIM} -> {student.embed_dim}; trainable parameters "
          f"{n_img:,} image + {n_txt:,} text")
    print(f"synthetic set {args.n_syn} pairs, batch_syn {args.batch_syn}; median of {args.repeats} "
          f"(after 1 warm-up), memory of one more iteration; plain = syn_steps SGD steps without create_graph")
    header = f"{'syn_steps':>9}  {'iteration s':>11}  {'plain s':>9}  {'ratio':>6}  {'peak RSS +MiB':>13}"
    if device.type == "cuda":
        header += f"  {'peak CUDA MiB':>13}"
    print(header)
    for syn_steps in args.syn_steps:
        r = bench_syn_steps(args, syn_steps, student, experts, device)
        line = (f"{r['syn_steps']:>9}  {r['iteration_s']:>11.3f}  {r['plain_s']:>9.3f}  {r['ratio']:>6.1f}  "
                f"{r['rss_mb']:>13.1f}")
        if "cuda_mb" in r:
            line += f"  {r['cuda_mb']:>13.1f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
