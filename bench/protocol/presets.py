"""Evaluation protocols of the field as data: how each source trains a student on a set and
which epoch it reports.

Every paper of this field reports recall under its own rule (epochs, schedule, weight decay,
which learned step size goes where, which epoch is reported), so a published number and ours
measure different things unless the rule is named. A preset is applied to the grid's own
``evaluation.train`` recipe (batch size, optimiser and base learning rates stay the grid's) and
says which selection rule its source reports; ``evaluation.protocol`` picks one or several
(a grid axis: every set is then evaluated under each, and each gets its block in the tables).

Each value carries the place in the authors' code it was read from (``SOURCES``; repositories
princetonvisualai/multimodal_dataset_distillation at c696fd6 and silicx/LoRS_Distill at
8a712af). Their loops train ``range(Epoch + 1)`` epochs, i.e. one more than the ``Epoch``
argument, which the presets keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from bench.protocol.selection import Selection
from bench.protocol.train import TrainConfig

#: How a set's learned step sizes reach the evaluation: ``per_side`` (image lr to the image
#: side, text lr to the text side), ``image_for_both`` (the seed code's rule), ``none``.
LearnedLrRule = Literal["per_side", "image_for_both", "none"]


@dataclass(frozen=True)
class ProtocolPreset:
    """One source's evaluation rule. ``train``: overrides of the grid's ``evaluation.train``
    for budget-sized sets; ``eval_every``/``eval_start``: the epochs its source evaluates at
    (None: the grid's ``evaluation.eval_every``); ``selection``: the rule its source reports."""

    name: str
    description: str
    train: Mapping[str, Any] = field(default_factory=dict)
    learned_lrs: LearnedLrRule = "per_side"
    eval_every: int | None = None
    eval_start: int = 0
    selection: Selection = "final"
    sources: Mapping[str, str] = field(default_factory=dict)

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return replace(base, **self.train)

    def lrs(self, learned: Mapping[str, float] | None) -> dict[str, float] | None:
        """The learned step sizes the evaluation uses under this rule (None: the recipe's)."""
        if not learned or self.learned_lrs == "none":
            return None
        if self.learned_lrs == "image_for_both":
            return {"image": float(learned["image"]), "text": float(learned["image"])}
        return dict(learned)


_SEED = "princetonvisualai/multimodal_dataset_distillation"
_LORS = "silicx/LoRS_Distill"

PRESETS: dict[str, ProtocolPreset] = {p.name: p for p in (
    ProtocolPreset(
        "suite", "this suite: the grid's evaluation.train as written, the final epoch reported"),
    ProtocolPreset(
        "vl-distill",
        "the seed paper's code (Wu et al., TMLR 2024): 51 epochs of SGD (momentum 0.9, weight decay 5e-4) "
        "with the learned image-side step size on both sides, the final epoch reported",
        train={"epochs": 51, "momentum": 0.9, "weight_decay": 5e-4, "lr_milestones": ()},
        learned_lrs="image_for_both", selection="final",
        sources={
            "epochs": f"{_SEED} distill.py:512 epoch_eval_train default 50; epoch.py:182 for ep in range(Epoch+1)",
            "momentum": f"{_SEED} epoch.py:172-173 SGD(..., momentum=0.9, weight_decay=0.0005)",
            "weight_decay": f"{_SEED} epoch.py:172-173 SGD(..., momentum=0.9, weight_decay=0.0005)",
            "lr_milestones": f"{_SEED} epoch.py:190 lr *= 0.1 only after the final evaluation (no effect)",
            "learned_lrs": f"{_SEED} distill.py:229 args.lr_net = syn_lr_img.item(); epoch.py:169-173 one lr for "
                           "both optimisers",
            "selection": f"{_SEED} epoch.py:186 evaluates once, at ep == Epoch",
        }),
    ProtocolPreset(
        "lors",
        "LoRS (ICML 2024) evaluate_synset_with_similarity: 101 epochs of SGD (momentum 0.9, weight decay 5e-4), "
        "learning rates x0.1 after epoch 51, the learned step sizes per side, test recall after epochs 1, 11, "
        "..., 101 and the best of those reported",
        train={"epochs": 101, "momentum": 0.9, "weight_decay": 5e-4, "lr_milestones": (51,), "lr_gamma": 0.1},
        learned_lrs="per_side", eval_every=10, eval_start=1, selection="test",
        sources={
            "epochs": f"{_LORS} distill_tesla_lors.py:518 epoch_eval_train default 100; src/epoch.py:284 "
                      "for ep in range(Epoch+1)",
            "momentum": f"{_LORS} src/epoch.py:260 mom=0.9, :271 SGD(..., momentum=mom, weight_decay=l2)",
            "weight_decay": f"{_LORS} src/epoch.py:260 l2=0.0005",
            "lr_milestones": f"{_LORS} src/epoch.py:272 MultiStepLR(milestones=[Epoch//2+1], gamma=0.1), "
                             ":299 stepped after every epoch",
            "lr_gamma": f"{_LORS} src/epoch.py:272 gamma=0.1",
            "learned_lrs": f"{_LORS} distill_tesla_lors.py:191 lr_img, lr_txt = syn_lr_img, syn_lr_txt; "
                           "src/epoch.py:268-270 one per parameter group",
            "eval_every": f"{_LORS} src/epoch.py:280-281 eval_freq = Epoch // 10; eval_epochs = range(0, Epoch+1, "
                          "eval_freq) + [Epoch], checked after training epoch ep (0-based)",
            "selection": f"{_LORS} src/epoch.py:296 keeps the evaluation with the best r_mean on the test loader",
        }),
)}


def preset(name: str) -> ProtocolPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {', '.join(PRESETS)}") from None
