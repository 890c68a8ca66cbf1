"""Contact sheet of the embedded dataset: images with their first caption, plus timing.

    python benchmarks/preview_embedded.py out.png [--split train] [--n 24] [--resolution 32]

Prints the wall time of generating the default spec, then saves a grid of the first ``--n``
images of a split with their first caption (wrapped) under each, upscaled without smoothing.
"""

from __future__ import annotations

import argparse
import textwrap
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.data.embedded import EmbeddedSpec, generate_embedded  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="PNG path to write")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--n", type=int, default=24, help="number of images on the sheet")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cols", type=int, default=6)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    default = generate_embedded(EmbeddedSpec())
    elapsed = time.perf_counter() - start
    n_images = sum(default.split(s).n_images for s in ("train", "val", "test"))
    print(f"default spec: {n_images} images at 32 px generated in {elapsed:.2f} s")

    spec = EmbeddedSpec(resolution=args.resolution, seed=args.seed)
    data = default if spec == EmbeddedSpec() else generate_embedded(spec)
    split = data.split(args.split)
    n = min(args.n, split.n_images)
    first_caption = {}
    for c, i in enumerate(split.caption_image.tolist()):
        first_caption.setdefault(i, split.captions[c])

    cols = args.cols
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.9 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(split.images[k].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(first_caption[k], 26)), fontsize=7.5)
    fig.suptitle(f"embedded/{args.split}, {split.resolution} px, seed {args.seed}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
