"""The frozen image tower's features of a large image set, computed once per process.

Every trainer on a frozen tower maps the images through it once (``tower_features``) instead of
at every step. At Flickr30K's shape that single pass over the 29,000 training images costs
~30 s on the 2-core machine, and it was paid again by each of the 15 experts, the proxy, each
seed of the ``full`` row and every mdm / covmatch cell: about 60% of each expert's time. The
tower is frozen and in eval mode, so the pass is a pure function of the tower's weights and the
images: a process keeps its last few results and hands them back bit for bit (what a new pass on
the same device computes), keyed by the content of both, not by object identity (each expert
builds its own student from the same weights). Small inputs (budget-sized sets) are not kept:
their pass is cheap and they are many.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bench.core.io import bytes_hash

#: Inputs with fewer images are computed every time (a budget-sized set's pass is cheap).
MIN_IMAGES = 4096
#: How many results a process keeps (the training split of one or two datasets).
KEEP = 2

_kept: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def _digest(tensor: torch.Tensor) -> str:
    """The hash of a tensor's bytes, its dtype and shape (hashed in place, no copy of the data
    beyond what making it contiguous on the CPU takes)."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    array = np.ascontiguousarray(t.contiguous().view(torch.uint8).numpy() if t.dtype == torch.bfloat16 else t.numpy())
    return bytes_hash(f"{t.dtype}{tuple(t.shape)}".encode(), memoryview(array).cast("B"), length=32)


def tower_digest(tower: nn.Module) -> str:
    """The tower's identity: its class and every parameter and buffer, by content."""
    parts = [part for name, tensor in tower.state_dict().items() for part in (name.encode(), _digest(tensor).encode())]
    return bytes_hash(type(tower).__qualname__.encode(), *parts, length=32)


def kept_features(tower: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int,
                  compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` (the tower's features of ``images``), or what an earlier call with the same
    tower weights, images, device, chunk size and autocast state returned in this process. The result is shared
    between callers: read it, never write into it."""
    if images.shape[0] < MIN_IMAGES:
        return compute()
    dev = torch.device(device)
    autocast = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None
    key = (tower_digest(tower), _digest(images), str(dev), batch_size, str(autocast))
    if key in _kept:
        _kept.move_to_end(key)
        return _kept[key]
    features = compute()
    _kept[key] = features
    while len(_kept) > KEEP:
        _kept.popitem(last=False)
    return features


def forget() -> None:
    """Drop every kept result (tests; a process that wants its memory back)."""
    _kept.clear()
