"""from-file: a set read from a file, evaluated like any method's output.

``{name: from-file, params: {path: sets/x.safetensors, format: bench}}`` hands the grid a set
made elsewhere (by this suite, exported with ``run_bench.py export``, or by the authors' code
of LoRS, RepBlend or the seed paper), so every student, protocol, curve and table applies to
it unchanged. The formats (docs/methods.md, "from-file" names the authors' files and lines):

* ``bench``: this suite's bundle (:mod:`bench.data.set_bundle`);
* ``lors`` / ``repblend``: the ``distilled_<it>.pt`` dict both codes ``torch.save``: ``image``
  (n, 3, H, W) normalised with CLIP's mean and std, ``text`` (n, d), ``similarity_mat`` (n, n,
  rows images, columns texts), ``syn_lr_img`` / ``syn_lr_txt``; the loss of the similarity
  targets is not in the file (``soft_target_loss``, their scripts' WBCE by default);
* ``vl-distill``: the seed paper's pair of tensors ``images_<it>.pt`` (CLIP-normalised) and
  ``labels_<it>.pt`` (text vectors), no step sizes.

Nothing is resized or projected: a set of another resolution, text width or size than the
cell's is refused before any compute, in one line naming the entry.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from bench.core.config import PATH_FIELD
from bench.data.datasets import PreparedDataset
from bench.data.pairs import PairSet, SoftTargets
from bench.data.set_bundle import LoadedSet, SetFileError, read_bundle, renormalise
from bench.methods_api import Method, MethodContext, MethodOutput, index_problem
from bench.registry import register

#: The normalisation of the authors' image pipelines (OpenAI CLIP's statistics): LoRS
#: data/__init__.py:57, RepBlend data/__init__.py:66, the seed paper data/__init__.py:57.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Format = Literal["bench", "lors", "repblend", "vl-distill"]


@dataclass(frozen=True)
class FromFileParams:
    """path: the set's file (relative: from where the command runs), for ``vl-distill`` the
    images file. format: see the module docstring. text_path: ``vl-distill``'s text vectors
    (default: ``labels_<it>.pt`` beside ``images_<it>.pt``). soft_target_loss: the loss of a
    LoRS / RepBlend similarity matrix (their files do not say; their scripts use WBCE).
    learned_lrs: train with the step sizes the file carries (False: the recipe's)."""

    path: str = field(metadata=PATH_FIELD)
    format: Format = "bench"
    text_path: str | None = field(default=None, metadata=PATH_FIELD)
    soft_target_loss: Literal["wbce", "infonce"] = "wbce"
    learned_lrs: bool = True

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise ValueError("path is empty; name the set's file")
        if self.text_path is not None and self.format != "vl-distill":
            raise ValueError(f"text_path is read by format 'vl-distill' only (format is {self.format!r})")


def _torch_file(path: Path) -> Any:
    """A torch file's content as plain tensors (``weights_only``: a file from elsewhere runs no code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not its own
        raise SetFileError(f"{path}: not a torch file of tensors ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _tensor(obj: Any, what: str, path: Path, ndim: int) -> torch.Tensor:
    if not isinstance(obj, torch.Tensor) or obj.ndim != ndim or not obj.is_floating_point():
        got = f"{obj.dtype} {tuple(obj.shape)}" if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise SetFileError(f"{path}: {what} must be a {ndim}-D float tensor, got {got}")
    return obj.detach().float()


def _authors_images(images: torch.Tensor, path: Path) -> torch.Tensor:
    if images.shape[1] != 3:
        raise SetFileError(f"{path}: images must be (n, 3, H, W), got {tuple(images.shape)}")
    return renormalise(images, CLIP_MEAN, CLIP_STD)


def _pairs(images: torch.Tensor, text: torch.Tensor, soft: SoftTargets | None, path: Path) -> PairSet:
    if images.shape[0] != text.shape[0]:
        raise SetFileError(f"{path}: {images.shape[0]} images but {text.shape[0]} text vectors")
    try:
        return PairSet.synthetic(images, text, soft)
    except ValueError as exc:
        raise SetFileError(f"{path}: {exc}") from None


def read_lors(path: Path, loss: str) -> LoadedSet:
    """LoRS's and RepBlend's ``distilled_<it>.pt`` (LoRS distill_tesla_lors.py:234-241,
    RepBlend distill_repblend.py:265-272)."""
    data = _torch_file(path)
    if not isinstance(data, dict):
        raise SetFileError(f"{path}: expected the dict LoRS / RepBlend save (image, text, similarity_mat, ...), "
                           f"got {type(data).__name__}")
    missing = [k for k in ("image", "text", "similarity_mat") if k not in data]
    if missing:
        raise SetFileError(f"{path}: no {missing[0]!r} entry (keys: {sorted(map(str, data))}); LoRS / RepBlend "
                           "save image, text, similarity_mat, syn_lr_img, syn_lr_txt")
    images = _authors_images(_tensor(data["image"], "image", path, 4), path)
    text = _tensor(data["text"], "text", path, 2)
    soft = SoftTargets(_tensor(data["similarity_mat"], "similarity_mat", path, 2), loss)  # type: ignore[arg-type]
    lrs = None
    if "syn_lr_img" in data and "syn_lr_txt" in data:
        lrs = {"image": float(_tensor(data["syn_lr_img"], "syn_lr_img", path, 0)),
               "text": float(_tensor(data["syn_lr_txt"], "syn_lr_txt", path, 0))}
    return LoadedSet(_pairs(images, text, soft, path), lrs, None)


def vl_distill_text_path(images_path: Path, text_path: str | None) -> Path:
    """The seed paper's text file: ``text_path``, or ``labels_<it>.pt`` beside ``images_<it>.pt``."""
    if text_path is not None:
        return Path(text_path)
    match = re.fullmatch(r"images_(.+)\.pt", images_path.name)
    if not match:
        raise SetFileError(f"{images_path}: format 'vl-distill' reads images_<it>.pt with labels_<it>.pt beside it; "
                           "name the text vectors' file with text_path")
    return images_path.with_name(f"labels_{match.group(1)}.pt")


def read_vl_distill(path: Path, text_path: str | None) -> LoadedSet:
    """The seed paper's two tensors (distill.py:292-293 of its code, commented out there)."""
    labels = vl_distill_text_path(path, text_path)
    if not labels.is_file():
        raise SetFileError(f"{labels}: no such file (the text vectors of {path.name})")
    images = _authors_images(_tensor(_torch_file(path), "the images file's tensor", path, 4), path)
    text = _tensor(_torch_file(labels), "the labels file's tensor", labels, 2)
    return LoadedSet(_pairs(images, text, None, path), None, None)


@lru_cache(maxsize=2)  # a set of 1,000 224 px images is 600 MB: few stay in memory
def _load(path: str, fmt: str, text_path: str | None, loss: str, stamp: tuple[int, int]) -> LoadedSet:
    del stamp  # part of the cache key only: a file replaced in place is read again
    if fmt == "bench":
        return read_bundle(path)
    if fmt in ("lors", "repblend"):
        return read_lors(Path(path), loss)
    return read_vl_distill(Path(path), text_path)


def _stamp(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def tensors_file(params: FromFileParams) -> Path:
    """The file holding the set's tensors (a bundle may be named by its card or its stem)."""
    if params.format == "bench":
        from bench.data.set_bundle import bundle_paths

        return bundle_paths(params.path)[0]
    return Path(params.path)


def load_set(params: FromFileParams) -> LoadedSet:
    """The set ``params`` name, read once per process while the file is unchanged."""
    path = tensors_file(params)
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "no such file"
        raise SetFileError(f"{path}: {what}")
    return _load(str(path), params.format, params.text_path, params.soft_target_loss, _stamp(str(path)))


@lru_cache(maxsize=32)
def _sha256(path: str, stamp: tuple[int, int]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_problem(loaded: LoadedSet, data: PreparedDataset) -> str | None:
    """Why the real pairs a set names cannot be this dataset's (only asked of a set made from
    this dataset: same dataset key in its card)."""
    indices = loaded.pairs.source_indices
    if indices is None:
        return None
    return index_problem(indices.numpy(), data.train.n_captions)


def same_dataset(loaded: LoadedSet, data: PreparedDataset) -> bool:
    return bool(loaded.card) and (loaded.card.get("dataset") or {}).get("key") == data.key


@register("from-file", "distillation", "a set read from a file: this suite's bundle, or LoRS's, RepBlend's or "
          "the seed paper's saved set")
class FromFile(Method):
    Params = FromFileParams

    @classmethod
    def file_problem(cls, params: FromFileParams) -> str | None:
        try:
            load_set(params)
        except SetFileError as exc:
            return f"path: {exc}"
        return None

    @classmethod
    def input_digest(cls, params: FromFileParams) -> str | None:
        files = [tensors_file(params)]
        if params.format == "vl-distill":
            try:
                files.append(vl_distill_text_path(files[0], params.text_path))
            except SetFileError:
                pass
        return "+".join(_sha256(str(f), _stamp(str(f))) if f.is_file() else "missing" for f in files)

    @classmethod
    def budget_problem(cls, params: FromFileParams, budget: int, data: PreparedDataset) -> str | None:
        """The set must be the cell's: ``budget`` pairs, the dataset's resolution, the text
        encoder's width (nothing is resized or projected)."""
        try:
            loaded = load_set(params)
        except SetFileError as exc:
            return f"path: {exc}"
        pairs, name = loaded.pairs, tensors_file(params)
        if len(pairs) != budget:
            return (f"path: {name} holds {len(pairs)} pairs, the cell's budget is {budget} (give each budget its "
                    f"file: budget_params.{budget}.path, or run this entry at budgets: [{len(pairs)}])")
        height, width = (int(s) for s in pairs.images.shape[-2:])
        size = data.train.resolution
        if (height, width) != (size, size):
            return (f"path: {name} holds {height}x{width} px images, dataset {data.name} is {size}x{size} px "
                    "(sets are not resized; set the dataset's resolution to the set's)")
        if pairs.text_emb.shape[1] != data.text_dim:
            return (f"path: {name} holds text vectors of width {pairs.text_emb.shape[1]}, the text encoder of "
                    f"{data.name} gives {data.text_dim} (another text encoder's vectors; use the encoder the "
                    "set was made with)")
        problem = source_problem(loaded, data) if same_dataset(loaded, data) else None
        return f"path: {name} names real pairs that {problem}" if problem else None

    def run(self, ctx: MethodContext, budget: int, seed: int) -> MethodOutput:
        del seed  # nothing random: the set is the file's
        params: FromFileParams = self.params
        loaded = load_set(params)
        pairs = loaded.pairs
        if pairs.source_indices is not None and not same_dataset(loaded, ctx.data):
            pairs = replace(pairs, source_indices=None)  # they name pairs of another dataset
        path = tensors_file(params)
        info: dict[str, Any] = {"file": str(path), "format": params.format,
                                "sha256": _sha256(str(path), _stamp(str(path)))}
        if loaded.card:
            info["card"] = {k: loaded.card.get(k) for k in ("cell_id", "method", "budget", "config_hash")
                            if k in loaded.card}
        return MethodOutput(pairs, loaded.learned_lrs if params.learned_lrs else None, info)
