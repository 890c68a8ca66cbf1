"""Time and memory of one trajectory-matching iteration, per meta-gradient mode, against the
original loop and against plain training steps.

One iteration is what ``TrajectoryMatcher.run`` does per step (``TrajectoryMatcher.update``):
``syn_steps`` SGD steps of the student on mini-batches of the synthetic set, the meta-gradient
to the images, texts and step sizes, and the optimiser step. Modes, timed in the same run on the
same student, batches and expert segment:

* ``original``: a re-implementation of the original inner loop (``benchmarks/original_loop.py``:
  one flat parameter vector per tower, every iterate and its graph kept), the yardstick;
* ``unrolled`` / ``recompute``: this project's matcher (``matching.memory``), the latter with
  peak memory independent of ``syn_steps``;
* ``+segment``: ``recompute`` keeping only every ``--iterate-segment``-th parameter iterate
  (``matching.iterate_segment``), so that the iterates too stop growing with ``syn_steps``;
* ``+bf16``: the student's forward in the inner steps under bfloat16 autocast
  (``matching.precision: bf16``; meant for CUDA, slow on most CPUs).

``plain`` is ``syn_steps`` ordinary SGD steps (forward, backward, in-place update, no graph
kept) on batches of the same size: the ratio iteration / plain is the price of
differentiating through training. Peak memory of an iteration is measured from a clean
baseline: the CUDA allocator's peak on a GPU; on the CPU the process's resident-set growth and
(glibc) the live heap's growth, which unlike RSS leaves out freed pages the allocator keeps.

The student, resolution and text width are a grid config's (``--config``); expert parameters
are random (a fresh student, then small Gaussian steps), so no data or experts are needed, and
a model checkpoint that is not on disk is replaced by random weights (the cost does not depend
on the values). ``--tower vit`` compares full-parameter and LoRA matching of one ViT.

    python benchmarks/bench_distill.py                                   # quickstart student, CPU
    python benchmarks/bench_distill.py --syn-steps 8 32 --modes recompute unrolled recompute+segment
    python benchmarks/bench_distill.py --set 'model.image_encoder={name: convnet, width: 64, depth: 3}' \
        --set model.embed_dim=null                                       # the from-scratch ConvNet
    python benchmarks/bench_distill.py --config configs/flickr30k.yaml --device cuda \\
        --batch-syn 25 50 100 --syn-steps 8 20 --modes original unrolled recompute recompute+bf16
    python benchmarks/bench_distill.py --tower vit
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from anywhere

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from bench.core.env import format_machine, pick_device  # noqa: E402
from bench.core.measure import measure  # noqa: E402
from bench.distill.matching import (  # noqa: E402
    LearnedTensor,
    MatchingConfig,
    TrajectoryMatcher,
    step_sizes,
)
from bench.grid.spec import GridConfig, load_grid  # noqa: E402
from bench.models.losses import contrastive_loss  # noqa: E402
from bench.models.student import ModelConfig, Student, build_student, tower_features  # noqa: E402
from benchmarks._towers import add_vit_arguments, describe_vit, tower_models  # noqa: E402
from benchmarks.original_loop import original_meta_gradients  # noqa: E402

MODES = ("original", "unrolled", "recompute", "recompute+segment", "unrolled+bf16", "recompute+bf16",
         "recompute+segment+bf16")


class RandomExperts:
    """Stands in for a :class:`bench.distill.experts.TrajectoryBuffer`: one expert whose epoch 0 is a
    fresh student and whose epoch e is that plus e small Gaussian steps."""

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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_mb() -> float | None:
    """Bytes the process's malloc has handed out and not taken back (glibc's ``mallinfo2``:
    in-use heap + mmapped chunks), the CPU analogue of the CUDA allocator's allocated bytes:
    unlike RSS it does not count freed pages the allocator keeps, which vary from run to run."""
    if _LIBC is None or not hasattr(_LIBC, "mallinfo2"):
        return None
    _LIBC.mallinfo2.restype = _MallInfo2
    info = _LIBC.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def _peak_mb(fn: Callable[[], None], device: torch.device) -> tuple[float, float | None]:
    """Memory one call adds at its peak, from a clean baseline (a separate call: the page faults
    of memory handed back to the OS would otherwise be timed): the CUDA allocator's peak on a
    GPU; on the CPU the resident set's growth and, with glibc, the live heap's."""
    _release_freed_memory(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, None
    heap_base = _heap_mb()
    heap_peak = [heap_base]
    stop = threading.Event()

    def sample_heap() -> None:
        while heap_base is not None and not stop.wait(0.0005):
            heap_peak[0] = max(heap_peak[0], _heap_mb())  # type: ignore[type-var]

    sampler = threading.Thread(target=sample_heap, daemon=True)
    sampler.start()
    try:
        with measure(device, interval=0.005) as cost:
            fn()
    finally:
        stop.set()
        sampler.join()
    heap = None if heap_base is None else max(heap_peak[0], _heap_mb()) - heap_base  # type: ignore[operator]
    return cost.peak_rss_mb - cost.baseline_rss_mb, heap


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Case:
    """One (student, synthetic set, matcher config): an iteration in any mode, and plain steps."""

    def __init__(self, args: argparse.Namespace, model: ModelConfig, batch_syn: int, syn_steps: int, mode: str,
                 device: torch.device) -> None:
        memory, *options = mode.split("+")
        cfg = replace(args.matching, batch_syn=batch_syn, syn_steps=syn_steps,
                      memory="unrolled" if memory == "original" else memory,
                      precision="bf16" if "bf16" in options else "fp32",
                      iterate_segment=args.iterate_segment if "segment" in options else None)
        self.device, self.mode, self.cfg = device, mode, cfg
        self.student = build_student(model, args.resolution, args.text_dim, args.seed)
        self.experts = RandomExperts(self.student, cfg.last_epoch + 1, args.seed + 1)
        self.matcher = TrajectoryMatcher(self.student, self.experts, cfg, device)
        gen = torch.Generator().manual_seed(args.seed)
        images = torch.randn(args.n_syn, 3, args.resolution, args.resolution, generator=gen)
        texts = F.normalize(torch.randn(args.n_syn, args.text_dim, generator=gen), dim=1)
        self.learned = {"images": LearnedTensor(images, 100.0, 0.5), "texts": LearnedTensor(texts, 100.0, 0.5),
                        "lrs": step_sizes(cfg.syn_lr_init, 1e-5, 0.5)}
        self.tensors = self.matcher.tensors(self.learned)
        self.opt = self.matcher.optimizer(self.tensors, self.learned)
        self.seed, self.it = args.seed, 0

    def iteration(self) -> None:
        self.it += 1
        if self.mode != "original":
            self.matcher.update(self.tensors, self.learned, self.opt, self.seed, self.it)
            return
        m = self.matcher
        expert, start_epoch, plan = m.plan(self.tensors["images"].shape[0], self.seed, self.it)
        start, target = m.snapshots.get(expert, start_epoch), m.snapshots.get(expert, start_epoch + self.cfg.expert_epochs)
        t = self.tensors
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            _, grads = original_meta_gradients(self.student, m.layout, t["images"], t["texts"], t["lrs"], start,
                                               target, plan, self.cfg.inner_logit_scale)
        for name, grad in grads.items():
            t[name].grad = grad
        self.opt.step()
        with torch.no_grad():
            t["lrs"].clamp_(min=0.0)

    def plain_steps(self) -> None:
        """syn_steps ordinary SGD steps on the same batches (no graph kept), as the trainer
        takes them: a frozen tower's features computed once, then only the heads' steps."""
        plain = self.student
        lrs = self.tensors["lrs"].detach()
        side = {n: 0 if plain.modality_of(n) == "image" else 1 for n in plain.trainable_parameters()}
        _, _, plan = self.matcher.plan(self.tensors["images"].shape[0], self.seed, self.it)
        x, t = self.tensors["images"].detach(), self.tensors["texts"].detach()
        frozen = plain.frozen_tower
        if frozen:
            x = tower_features(plain, x, self.device)
        for batch in plan.batches:
            img_emb, txt_emb = plain(x[batch], t[batch], from_features=frozen)
            loss = contrastive_loss(img_emb, txt_emb, self.cfg.inner_logit_scale)
            plain.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for name, p in plain.trainable_parameters().items():
                    p.add_(p.grad, alpha=-float(lrs[side[name]]))


def measure_case(args: argparse.Namespace, model: ModelConfig, batch_syn: int, syn_steps: int, mode: str,
                 device: torch.device) -> dict[str, object]:
    row: dict[str, object] = {"mode": mode, "batch_syn": batch_syn, "syn_steps": syn_steps}
    case = None
    try:
        case = Case(args, model, batch_syn, syn_steps, mode, device)
        case.iteration()  # warm-up: first-call allocations, kernel selection, expert snapshots
        row["iteration_s"] = statistics.median(_seconds(case.iteration, device) for _ in range(args.repeats))
        # RSS is sampled, and the allocator's pages differ from call to call: the median of several.
        peaks = [_peak_mb(case.iteration, device) for _ in range(args.repeats)]
        row["peak_mb"] = statistics.median(rss for rss, _ in peaks)
        if peaks[0][1] is not None:
            row["heap_mb"] = statistics.median(heap for _, heap in peaks)  # type: ignore[type-var]
        if args.plain:
            case.plain_steps()
            row["plain_s"] = statistics.median(_seconds(case.plain_steps, device) for _ in range(args.repeats))
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        if not _is_oom(exc):
            raise
        row["oom"] = True
    finally:
        del case
        _release_freed_memory(device)
    return row


def format_row(row: dict[str, object], baseline: dict[str, object] | None) -> str:
    head = f"{row['mode']:<22}  {row['batch_syn']:>9}  {row['syn_steps']:>9}"
    if row.get("oom"):
        return f"{head}  {'out of memory':>11}"
    line = f"{head}  {row['iteration_s']:>11.3f}  {row['peak_mb']:>14.1f}"
    if "heap_mb" in row:
        line += f"  {row['heap_mb']:>15.1f}"
    if "plain_s" in row:
        line += f"  {row['plain_s']:>8.3f}  {row['iteration_s'] / row['plain_s']:>6.2f}"  # type: ignore[operator]
    if baseline is not None and not baseline.get("oom") and row["mode"] != "original":
        line += f"  {baseline['iteration_s'] / row['iteration_s']:>8.2f}x"  # type: ignore[operator]
    return line


def run_modes(args: argparse.Namespace, model: ModelConfig, device: torch.device) -> list[dict[str, object]]:
    mem = "peak CUDA +MiB" if device.type == "cuda" else "peak RSS +MiB"
    header = f"{'mode':<22}  {'batch_syn':>9}  {'syn_steps':>9}  {'iteration s':>11}  {mem:>14}"
    if device.type != "cuda" and _heap_mb() is not None:
        header += f"  {'peak heap +MiB':>15}"
    if args.plain:
        header += f"  {'plain s':>8}  {'ratio':>6}"
    if "original" in args.modes:
        header += f"  {'vs original':>9}"
    print(header)
    rows = []
    for batch_syn in args.batch_syn:
        for syn_steps in args.syn_steps:
            baseline = None
            for mode in args.modes:
                row = measure_case(args, model, batch_syn, syn_steps, mode, device)
                baseline = row if mode == "original" else baseline
                rows.append(row)
                print(format_row(row, baseline), flush=True)
    return rows


def _config_model(grid: GridConfig) -> tuple[ModelConfig, str]:
    """The config's student; a checkpoint file that is not on disk becomes random weights."""
    enc = grid.model.image_encoder
    if enc.path and enc.name == "timm" and not Path(enc.path).expanduser().is_file():
        note = f"{enc.timm_name} with random weights ({enc.path} not found)"
        return replace(grid.model, image_encoder=replace(enc, pretrained=False)), note
    return grid.model, f"{enc.name} {enc.timm_name or enc.path or f'width {enc.width} depth {enc.depth}'}"


def _text_dim(grid: GridConfig) -> int:
    """384 for the embedded MiniLM; otherwise the local encoder's hidden size (768 if unreadable)."""
    import json

    path = grid.datasets[0].text_encoder.path
    if path is None:
        return 384
    try:
        return int(json.loads((Path(path).expanduser() / "config.json").read_text())["hidden_size"])
    except (OSError, KeyError, ValueError):
        return 768


def run_tower(args: argparse.Namespace, grid_model: ModelConfig, device: torch.device) -> None:
    args.resolution = args.vit_resolution
    with tempfile.TemporaryDirectory(prefix="bench-vit-") as tmp:
        models = tower_models(args, grid_model, Path(tmp) / "vit")
        print(f"{describe_vit(args)}; {grid_model.text_head} text head {args.text_dim} -> {grid_model.embed_dim or args.vit_hidden}; "
              f"LoRA on q_proj/v_proj, alpha 2r, dropout 0")
        for label, model in models.items():
            student = build_student(model, args.resolution, args.text_dim, args.seed)
            params = student.trainable_parameters()
            n_img = sum(p.numel() for n, p in params.items() if student.modality_of(n) == "image")
            print(f"\n{label}: {n_img:,} trainable image parameters")
            run_modes(args, model, device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"),
                        help="grid whose student, (first) dataset resolution and text encoder width are used")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value, e.g. --set 'model.image_encoder={name: convnet, width: 64, depth: 3}'")
    parser.add_argument("--tower", choices=["config", "vit"], default="config",
                        help="config: the config's student; vit: full-parameter vs LoRA matching of one ViT")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None,
                        help="default: original unrolled recompute (+ recompute+bf16 on CUDA)")
    parser.add_argument("--syn-steps", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--iterate-segment", type=int, default=8, help="iterate_segment of the +segment modes")
    parser.add_argument("--batch-syn", type=int, nargs="+", default=[50])
    parser.add_argument("--n-syn", type=int, default=None, help="pairs in the synthetic set (default 2 x the largest batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain-steps baseline")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the config's runner.cpus_per_task, what a cell gets)")
    parser.add_argument("--seed", type=int, default=0)
    add_vit_arguments(parser)
    args = parser.parse_args()
    if min(args.batch_syn) < 2 or args.repeats < 1 or min(args.syn_steps) < 1 or args.iterate_segment < 1:
        parser.error("every --batch-syn must be >= 2, --repeats, --iterate-segment and every --syn-steps >= 1")
    device = pick_device(args.device)
    args.modes = args.modes or ["original", "unrolled", "recompute"] + (["recompute+bf16"] if device.type == "cuda" else [])
    args.n_syn = args.n_syn or 2 * max(args.batch_syn)
    grid = load_grid(args.config, args.set)
    torch.set_num_threads(args.threads or grid.runner.cpus_per_task)
    data = grid.datasets[0]
    args.resolution = data.resolution
    args.text_dim = _text_dim(grid)
    args.matching = MatchingConfig(checkpoint_every=0)
    print(format_machine())
    print(f"device {device}; synthetic set {args.n_syn} pairs; median of {args.repeats} iterations after 1 warm-up; "
          f"peak memory: median over {args.repeats} more iterations, each from a clean baseline"
          + (f"; +segment: iterate_segment {args.iterate_segment}" if any("segment" in m for m in args.modes) else ""))
    if args.tower == "vit":
        run_tower(args, grid.model, device)
        return 0
    model, note = _config_model(grid)
    student = build_student(model, args.resolution, args.text_dim, args.seed)
    params = student.trainable_parameters()
    n_img = sum(p.numel() for n, p in params.items() if student.modality_of(n) == "image")
    n_txt = sum(p.numel() for n, p in params.items() if student.modality_of(n) == "text")
    print(f"{Path(args.config).name}: {note} at {args.resolution} px, {model.text_head} text head {args.text_dim} -> "
          f"{student.embed_dim}; trainable parameters {n_img:,} image + {n_txt:,} text")
    del student, params
    run_modes(args, model, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
