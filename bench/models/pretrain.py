"""Pretrain the embedded default's image tower on a procedural corpus of its own.

The paper's image tower is ImageNet-pretrained: it arrives knowing what things look like, and
the pairs teach it (and the text head) the alignment with captions. The embedded default does
the same at CPU scale: a ConvNet is pretrained once, on procedural scenes drawn from seeds that
the benchmark never uses, to predict what each scene holds (which shapes, colours, textures,
sizes, how many objects, where, on which background, and which shape has which colour or
texture: the labels of a classification corpus, no captions). The weights ship with the package
(``package:`` paths in ``image_encoder.path``), so a fresh machine runs the benchmark without
training them; this module remakes them exactly (one torch thread, every draw seeded):

    python -m bench.models.pretrain --out bench/models/weights/convnet64-procedural-v1.safetensors

The recipe is stored in the file's metadata and printed with the held-out label F1.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.data.embedded import (
    BACKGROUNDS,
    COLOURS,
    REGION_NAMES,
    SHAPES,
    SIZES,
    TEXTURES,
    EmbeddedSpec,
    Scene,
    render_split,
)
from bench.data.pairs import normalize_images
from bench.models.convnet import ConvNet

#: Seeds of the pretraining corpus; the benchmark's embedded configs use small seeds (0 by
#: default). A grid that sets ``embedded.seed`` to one of these would test on pretraining scenes.
CORPUS_SEED = 7_000_001
HELD_OUT_SEED = 7_000_002


@dataclass(frozen=True)
class PretrainRecipe:
    width: int = 64
    depth: int = 3
    resolution: int = 32
    n_images: int = 20_000
    n_held_out: int = 2_000
    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0


def _label_names() -> list[str]:
    regions = sorted(set(REGION_NAMES.values()))
    names = [f"shape={s}" for s in SHAPES] + [f"colour={c}" for c in COLOURS] + [f"texture={t}" for t in TEXTURES]
    names += [f"size={s}" for s in SIZES] + [f"count={k}" for k in (1, 2, 3)] + [f"background={b}" for b in BACKGROUNDS]
    names += [f"region={r}" for r in regions]
    names += [f"{s}+{c}" for s in SHAPES for c in COLOURS] + [f"{s}+{t}" for s in SHAPES for t in TEXTURES]
    return names


LABELS = _label_names()
_INDEX = {name: i for i, name in enumerate(LABELS)}


def scene_labels(scene: Scene) -> np.ndarray:
    """Multi-hot vector of what the scene holds (see :data:`LABELS`)."""
    on = {f"count={len(scene.objects)}", f"background={scene.background}"}
    for obj in scene.objects:
        on |= {f"shape={obj.shape}", f"colour={obj.colour}", f"texture={obj.texture}", f"size={obj.size}",
               f"region={obj.region}", f"{obj.shape}+{obj.colour}", f"{obj.shape}+{obj.texture}"}
    out = np.zeros(len(LABELS), dtype=np.float32)
    out[[_INDEX[name] for name in on]] = 1.0
    return out


def corpus(n_images: int, resolution: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, multi-hot labels) of ``n_images`` procedural scenes of ``seed``."""
    spec = EmbeddedSpec(n_train_images=n_images, n_val_images=1, n_test_images=1, captions_per_image=1,
                        resolution=resolution, seed=seed)
    split, scenes = render_split(spec, "train")
    return split.images, torch.from_numpy(np.stack([scene_labels(s) for s in scenes]))


def _f1(net: ConvNet, head: nn.Linear, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Micro-F1 of the predicted labels (most labels are off in a scene, so plain accuracy is
    high for a tower that predicts nothing)."""
    with torch.no_grad():
        predicted = torch.cat([head(net(normalize_images(images[i:i + 512]))) for i in range(0, len(images), 512)]) > 0
    hits = float((predicted & (labels > 0)).sum())
    return 2 * hits / max(float(predicted.sum() + (labels > 0).sum()), 1.0)


def pretrain(recipe: PretrainRecipe, progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train the tower (and a linear label head, discarded); its state_dict and accuracies."""
    images, labels = corpus(recipe.n_images, recipe.resolution, CORPUS_SEED)
    held_images, held_labels = corpus(recipe.n_held_out, recipe.resolution, HELD_OUT_SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = ConvNet(recipe.width, recipe.depth, recipe.resolution)
        head = nn.Linear(net.out_dim, len(LABELS))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * -(-recipe.n_images // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(recipe.seed)
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        order = torch.randperm(recipe.n_images, generator=gen)
        total = 0.0
        for i in range(0, recipe.n_images, recipe.batch_size):
            batch = order[i:i + recipe.batch_size]
            loss = F.binary_cross_entropy_with_logits(head(net(normalize_images(images[batch]))), labels[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(batch)
        if progress:
            print(f"epoch {epoch + 1}/{recipe.epochs}: loss {total / recipe.n_images:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    scores = {"train_label_f1": _f1(net, head, images[:2000], labels[:2000]),
              "held_out_label_f1": _f1(net, head, held_images, held_labels),
              "seconds": time.perf_counter() - start}
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, scores


def main() -> int:
    from safetensors.torch import save_file

    from bench.core.io import write_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write the tower's weights (.safetensors)")
    for f in PretrainRecipe.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args()
    recipe = PretrainRecipe(**{k: getattr(args, k) for k in PretrainRecipe.__dataclass_fields__})
    torch.set_num_threads(1)  # one thread: the same weights on every run of this command
    state, scores = pretrain(recipe)
    metadata = {"recipe": json.dumps(asdict(recipe)), "labels": json.dumps(LABELS), "corpus_seed": str(CORPUS_SEED),
                "scores": json.dumps(scores), "torch": torch.__version__}
    write_atomic(args.out, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    print(json.dumps({"out": args.out, **scores}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
