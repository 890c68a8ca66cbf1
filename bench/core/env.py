"""What machine and software produced a number: recorded with every result and benchmark."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the previous count (results can
    depend on the thread count: kernels may order their reductions differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_DEVICE_TYPES = ("cpu", "cuda", "mps")


def device_syntax_problem(requested: str) -> str | None:
    """Why ``requested`` is not a device name we accept ('auto', 'cpu', 'cuda', 'cuda:N',
    'mps'), or None. Checks the spelling only, so a config loads on any machine."""
    if requested == "auto":
        return None
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in _DEVICE_TYPES:
        return f"device {requested!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"
    return None


def device_problem(requested: str) -> str | None:
    """Why ``requested`` cannot be used on this machine (bad name, no CUDA, no such GPU
    index, no MPS), or None."""
    problem = device_syntax_problem(requested)
    if problem or requested == "auto":
        return problem
    device = torch.device(requested)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"device {requested!r} was asked for but CUDA is not available on this machine"
        if device.index is not None and device.index >= count:
            return f"device {requested!r} was asked for but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"device {requested!r} was asked for but MPS is not available on this machine"
    return None


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' means the first CUDA device when one is visible, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(requested)
    if problem:
        raise RuntimeError(problem)
    return torch.device(requested)


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree this package was imported from (None outside git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """Versions of the packages that can change a number in a result."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("vl-distill-bench", "torch", "transformers", "peft", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12",
                 "faiss-gpu-cu11", "ray", "numpy", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import faiss

        info["faiss"] = getattr(faiss, "__version__", "unknown")
        info["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        info["faiss"] = None
    info["versions"] = package_versions()
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_count"] = torch.cuda.device_count()
    return info


def format_machine(info: dict[str, Any] | None = None) -> str:
    info = info or machine_info()
    parts = [f"{info['cpu']} ({info['cpu_count']} cores, torch threads {info['torch_threads']})"]
    if info.get("cuda_device"):
        parts.append(f"GPU {info['cuda_device']} x{info['cuda_count']}")
    parts.append(f"torch {info['torch']}, faiss {info.get('faiss')}, Python {info['python']}")
    return "; ".join(parts)
