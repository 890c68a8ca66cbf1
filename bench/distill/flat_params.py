"""A student's trainable parameters as one flat vector, image side first, then text side.

Trajectory matching takes many differentiable SGD steps. Keeping the parameters as one flat
vector turns each step's update into a single vector operation (instead of one small op per
tensor, hundreds for a transformer tower), makes the matching distance a slice reduction, and
lets the constant-memory mode store each iterate as one tensor. The student still runs on
ordinary named tensors: :meth:`ParamLayout.unflatten` hands ``functional_call`` views into the
flat vector, so gradients flow back into it without copies of the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from bench.models.student import Student

SIDES = ("image", "text")


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and positions of the trainable tensors in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    n_image: int  # elements of the image side; the text side follows
    n_image_tensors: int  # the first names are the image side's

    @staticmethod
    def of(student: Student) -> ParamLayout:
        params = student.trainable_parameters()
        image = [n for n in params if student.modality_of(n) == "image"]
        text = [n for n in params if student.modality_of(n) == "text"]
        if not image or not text:
            raise ValueError("trajectory matching needs trainable parameters on both the image and the text side")
        names = tuple(image + text)
        return ParamLayout(names, tuple(params[n].shape for n in names),
                           sum(params[n].numel() for n in image), len(image))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def side(self, name: str) -> slice:
        """The slice of the flat vector that holds one side ('image' or 'text')."""
        return slice(0, self.n_image) if name == "image" else slice(self.n_image, self.numel)

    def flatten(self, tensors: Mapping[str, torch.Tensor], device: torch.device | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise KeyError(f"parameters missing from the snapshot: {missing[:3]} ({len(missing)} in all)")
        return torch.cat([tensors[n].reshape(-1).to(device=device, dtype=dtype) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` shaped like the named parameters (differentiable)."""
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}

    def step_sizes(self, lrs: torch.Tensor) -> torch.Tensor:
        """Per-element step size: ``lrs[0]`` on the image side, ``lrs[1]`` on the text side."""
        return torch.cat([lrs[0:1].expand(self.n_image), lrs[1:2].expand(self.numel - self.n_image)])

    def side_sums(self, values: torch.Tensor) -> torch.Tensor:
        """(2,) sums of ``values`` over the image side and over the text side."""
        return torch.stack([values[: self.n_image].sum(), values[self.n_image:].sum()])
