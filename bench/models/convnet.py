"""ConvNet-D{depth}: the small from-scratch image encoder of the dataset-distillation literature.

Each block is conv3x3 -> instance norm -> ReLU -> 2x2 average pool. Instance norm is a
GroupNorm with one group per channel: it has no running statistics, so a forward pass is a
pure function of the parameters (needed to differentiate through unrolled training steps).
"""

from __future__ import annotations

import torch
from torch import nn


def resolution_problem(resolution: int, depth: int) -> str | None:
    """Why images of ``resolution`` pixels cannot go through ``depth`` pooling blocks (each
    halves the side, so the side must be a multiple of 2**depth), or None."""
    if resolution % (2**depth):
        return f"resolution {resolution} is not divisible by 2**depth = {2**depth}"
    return None


class ConvNet(nn.Module):
    def __init__(self, width: int = 128, depth: int = 3, resolution: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        problem = resolution_problem(resolution, depth)
        if problem:
            raise ValueError(problem)
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        side = resolution // (2**depth)
        self.out_dim = width * side * side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).flatten(1)
