"""Which epoch of an evaluation run is reported: the three selection rules, on one run's curve.

``final`` is the suite's headline (the last epoch, no choice made). ``val`` chooses the epoch
with the best mean recall on the val split and reads the test split there: an honest
selection, since the choice never looks at test. ``test`` chooses the epoch with the best test
mean: what LoRS, RepBlend and PDS report, optimistic by construction (the maximum of noisy
numbers over epochs), always labelled so. Each rule is applied per evaluation run (per seed),
as those papers do, before runs are pooled. Ties go to the earliest epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

#: Which epoch of an evaluation run is reported: the last (``final``), the one with the best
#: val mean (``val``, test read there), or the one with the best test mean (``test``: optimistic).
Selection = Literal["final", "val", "test"]
SELECTIONS: tuple[str, ...] = ("final", "val", "test")
SELECTION_LABELS: Mapping[str, str] = {
    "final": "final epoch",
    "val": "test at the epoch of the best val mean (val-selected)",
    "test": "best test epoch (test-selected, optimistic)",
}


class SelectionError(ValueError):
    """A run that cannot be read under a rule (no curve, or a curve without the split it needs)."""


def points(curve: Sequence[Mapping[str, Any]], split: str) -> list[Mapping[str, Any]]:
    """The curve's points on ``split``, in epoch order."""
    return sorted((p for p in curve if p["split"] == split), key=lambda p: p["epoch"])


def best_epoch(curve: Sequence[Mapping[str, Any]], split: str, metric: str = "mean") -> int:
    """The earliest epoch with the highest ``metric`` on ``split``."""
    chosen = points(curve, split)
    if not chosen:
        raise SelectionError(f"the evaluation curve has no point on the {split} split")
    best = max(p[metric] for p in chosen)
    return next(p["epoch"] for p in chosen if p[metric] == best)


def point_at(curve: Sequence[Mapping[str, Any]], split: str, epoch: int) -> Mapping[str, Any]:
    for p in curve:
        if p["split"] == split and p["epoch"] == epoch:
            return p
    raise SelectionError(f"the evaluation curve has no {split} point at epoch {epoch}")


def selected_metrics(seed: Mapping[str, Any], rule: str) -> tuple[dict[str, float], int | None]:
    """(metrics, chosen epoch) of one evaluation run (a record's ``per_seed`` entry) under
    ``rule``; the epoch is None for ``final``. ``val`` never reads a test value to choose."""
    if rule not in SELECTIONS:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {', '.join(SELECTIONS)}")
    if rule == "final":
        return dict(seed["metrics"]), None
    curve = seed.get("curve")
    if not curve:
        raise SelectionError("the run has no evaluation curve (run the grid with evaluation.eval_every set)")
    epoch = best_epoch(curve, "val" if rule == "val" else "test")
    point = point_at(curve, "test", epoch)
    return {k: v for k, v in point.items() if k not in ("epoch", "split")}, epoch
