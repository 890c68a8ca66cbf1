"""LoRA for pretrained transformer image towers (``image_encoder.lora``), via peft.

With LoRA the tower's own weights are frozen (``requires_grad`` False) and only the low-rank
adapters (plus the student's heads and any ``modules_to_save``) train. Everything downstream
keys on ``requires_grad``: :meth:`Student.trainable_parameters` is what the trainer optimises,
what an expert file records per epoch and what trajectory matching unrolls and matches, so
experts, trajectories and matching cover only the adapters and the heads.

What matching relies on, and how it is kept:

* The frozen weights are never stored in an expert file, so every student built from one
  config must have the SAME frozen weights whatever its seed (experts use seed 1000 + i, the
  matcher the method seed, evaluation the evaluation seeds). The tower is therefore loaded
  (or, with ``pretrained: false``, randomly initialised) under the fixed seed
  :data:`BASE_SEED`, and a checkpoint that leaves tower weights newly initialised (e.g. a ViT
  saved without its pooler) is an error unless those modules are listed in
  ``modules_to_save`` (then they train and are recorded like the adapters).
* The adapters are initialised by peft from torch's global RNG (lora_A Kaiming-uniform,
  lora_B zero, so epoch 0 of every expert is exactly the pretrained tower); that happens
  inside ``build_student``'s seeded fork, after the tower is loaded in a fork of its own, so
  it depends on the student seed only (not on what loading the checkpoint drew).
* ``dropout`` defaults to 0: peft then uses an identity, and the unrolled inner loop is
  deterministic and does not pay for dropout masks.
* Parameter names become ``image_encoder.model.base_model.model.<module>.lora_A.default.weight``
  (``...lora_B...``, ``...<module>.modules_to_save.default...``): still under
  ``image_encoder.``, so :meth:`Student.modality_of` puts them on the image side, and
  ``torch.func.functional_call`` with only these names works on the peft-wrapped tower (the
  frozen weights are read from the module).

Double backward through attention on CPU (torch 2.13, transformers 5.24, peft 0.21.2):
``attn_implementation: eager`` (the default) works for ViT and CLIP vision through peft (and
for DeiT / DINOv2). ``sdpa`` as such fails: the fused CPU kernel has no double backward, and
the meta-gradient's ``backward`` (not the unroll, whose first-order grads work) raises
"derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
implemented". The matcher therefore runs its inner loop under the math SDPA backend
(:func:`bench.distill.unroll.math_attention`), which is twice differentiable and gives the same
gradients as eager attention (identical on tiny ViT / CLIP towers), so ``sdpa`` works too and
ordinary training keeps the fused kernel. Should another op lack a double backward,
:meth:`bench.distill.matching.TrajectoryMatcher.meta_gradients` re-raises its error with the advice to use
``attn_implementation: eager``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

#: Seed under which a LoRA student's tower is loaded / initialised (see the module docstring).
BASE_SEED = 0

#: Default ``target_modules`` by ``model.config.model_type``: candidate sets tried in order,
#: the first whose every name is a Linear module of the tower wins. The query and value
#: projections, as in the LoRA paper; transformers 5 names them ``q_proj`` / ``v_proj`` in
#: ViT-family models too (``query`` / ``value`` in transformers 4). peft 0.21 has no defaults
#: for vision towers (its table covers language models only).
DEFAULT_TARGET_MODULES: dict[str, tuple[tuple[str, ...], ...]] = {
    "vit": (("q_proj", "v_proj"), ("query", "value")),
    "deit": (("q_proj", "v_proj"), ("query", "value")),
    "dinov2": (("q_proj", "v_proj"), ("query", "value")),
    "clip_vision_model": (("q_proj", "v_proj"),),
    "clip": (("q_proj", "v_proj"),),
}


@dataclass(frozen=True)
class LoraConfig:
    """``image_encoder.lora`` (only for ``image_encoder.name: hf``); absent = full fine-tuning.

    rank, alpha: adapter rank r and scale alpha (the update is B A * alpha / r).
    dropout: on the adapter input; 0 keeps the unrolled matching steps deterministic.
    target_modules: names (suffixes) of the Linear modules to adapt; None = the default for the
        tower's model type (:data:`DEFAULT_TARGET_MODULES`), an error for other types.
    modules_to_save: tower modules trained in full next to the adapters (e.g. ``[pooler]``),
        and recorded in the expert files with them."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and (not self.target_modules or not all(self.target_modules)):
            raise ValueError("lora.target_modules must list module names (or be left out for the default)")
        if not all(self.modules_to_save):
            raise ValueError("lora.modules_to_save must not contain empty names")


def _linear_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def resolve_target_modules(model: nn.Module, cfg: LoraConfig) -> tuple[str, ...]:
    """``cfg.target_modules``, or the default for the tower's model type."""
    if cfg.target_modules is not None:
        return cfg.target_modules
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    linear = _linear_names(model)
    candidates = DEFAULT_TARGET_MODULES.get(str(model_type))
    if candidates is None:
        raise ValueError(
            f"image_encoder.lora.target_modules: no default for model type {model_type!r} (defaults exist for "
            f"{', '.join(sorted(DEFAULT_TARGET_MODULES))}); list the Linear modules to adapt, e.g. "
            f"target_modules: [q_proj, v_proj]. This tower's Linear modules: {', '.join(sorted(linear))}")
    for names in candidates:
        if set(names) <= linear:
            return names
    raise ValueError(
        f"image_encoder.lora.target_modules: the default for model type {model_type!r} "
        f"({' or '.join(str(list(c)) for c in candidates)}) matches no Linear module of this tower; set "
        f"target_modules from its Linear modules: {', '.join(sorted(linear))}")


def _covered(key: str, modules: Iterable[str]) -> bool:
    """Whether parameter ``key`` lies inside a module named (or ending in) one of ``modules``."""
    dotted = "." + key
    return any(("." + m + ".") in dotted for m in modules)


def check_missing_weights(missing: Iterable[str], cfg: LoraConfig) -> None:
    """Tower weights the checkpoint lacked would stay frozen at random values: refuse them
    unless ``modules_to_save`` trains them."""
    frozen_random = sorted(k for k in missing if not _covered(k, cfg.modules_to_save))
    if frozen_random:
        modules = sorted({k.rsplit(".", 1)[0] for k in frozen_random})
        raise ValueError(
            f"image_encoder.lora: the checkpoint lacks {len(frozen_random)} weights of the tower "
            f"({', '.join(frozen_random[:4])}{', ...' if len(frozen_random) > 4 else ''}); with LoRA they would stay "
            f"frozen at random values. Train them with image_encoder.lora.modules_to_save "
            f"(e.g. [{modules[0].split('.')[0]}]) or use a complete checkpoint")


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Wrap ``model`` with peft LoRA: its weights frozen, adapters (and modules_to_save) trainable.

    Call it inside the student's seeded RNG fork: the adapter initialisation draws from
    torch's global RNG."""
    import peft

    peft_cfg = peft.LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(resolve_target_modules(model, cfg)),
        modules_to_save=list(cfg.modules_to_save) or None, bias="none",
    )
    with warnings.catch_warnings():  # peft 0.21 calls an attribute transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        wrapped = peft.get_peft_model(model, peft_cfg)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    if not any(".lora_" in n for n in trainable):  # pragma: no cover - peft raises first
        raise ValueError("image_encoder.lora: peft added no trainable adapter")
    return wrapped
