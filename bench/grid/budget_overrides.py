"""``--set budgets=[...]`` also drops what the methods say about budgets no longer run.

A paper config tunes some methods per budget (``budget_params``, ``budget_search``) and runs
some at a subset of the budgets (a method's own ``budgets``). Scaling it down from the command
line (``--set budgets=[100]``) would otherwise fail on every such entry ("budget 200 is not in
budgets [100]") and take one more ``--set`` per entry to clear. So when an override changes the
grid's ``budgets``, the entries of the budgets the *config file* listed and the override removed
are dropped, and one warning line names them. A method that the file runs only at removed
budgets (its own ``budgets`` all gone) is left out of that run, named on the same line: the
grid narrowed to one budget is then one piece of the whole grid (docs/regime.md), each cell with
the hash it has there. An entry for a budget the file itself does not list stays, and stays the
error it is without an override: that is a mistake in the file, not a consequence of the
override.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from bench.core.config import apply_overrides, parse_override

#: Per-method mappings keyed by budget; each is optional (absent keys are skipped).
BUDGET_KEYED = ("budget_params", "budget_search")
#: The grid's default budgets (GridConfig.budgets) when the file lists none.
DEFAULT_BUDGETS = (100,)


def _budget(key: Any) -> Any:
    """A mapping key as a budget: ``"200"`` (a ``--set ...budget_params.200`` path) is 200."""
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return key


def _listed(value: Any) -> set[Any]:
    """The budgets of a ``budgets`` value (a list, or a single number)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return {_budget(b) for b in items}


def _runs_nowhere(entry: Any, removed: set[Any]) -> bool:
    """Whether ``entry`` lists its own budgets and the override removed every one of them."""
    own = entry.get("budgets") if isinstance(entry, dict) else None
    return isinstance(own, list) and bool(own) and all(_budget(b) in removed for b in own)


def _drop_from_method(entry: dict[str, Any], removed: set[Any], where: str) -> list[str]:
    """Drop ``entry``'s budget-keyed entries and ``budgets`` items of the ``removed`` budgets
    (new containers: YAML anchors may share them between methods); returns what was dropped."""
    dropped: list[str] = []
    for key in BUDGET_KEYED:
        mapping = entry.get(key)
        if not isinstance(mapping, dict):
            continue
        gone = [k for k in mapping if _budget(k) in removed]
        if gone:
            entry[key] = {k: v for k, v in mapping.items() if k not in gone}
            dropped.extend(f"{where}.{key}.{k}" for k in gone)
    own = entry.get("budgets")
    if isinstance(own, list):
        kept = [b for b in own if _budget(b) not in removed]
        if len(kept) < len(own):
            entry["budgets"] = kept
            dropped.append(f"{where}.budgets {', '.join(str(b) for b in own if _budget(b) in removed)}")
    return dropped


def drop_removed_budgets(raw: dict[str, Any], data: dict[str, Any], overrides: list[str]) -> list[str]:
    """In ``data`` (``raw`` with ``overrides`` applied), drop the budget-keyed method entries of
    the budgets that ``raw`` lists and an override of ``budgets`` removed; returns what was
    dropped (``methods[4] (lors).budget_params.200``), empty when no override touches
    ``budgets``."""
    if not any(parse_override(text)[0][0] == "budgets" for text in overrides):
        return []
    before = _listed(raw.get("budgets", list(DEFAULT_BUDGETS)))
    removed = before - _listed(data.get("budgets", []))
    methods = data.get("methods")
    if not removed or not isinstance(methods, list):
        return []
    dropped: list[str] = []
    kept_methods = []
    for i, entry in enumerate(methods):
        if not isinstance(entry, dict):
            kept_methods.append(entry)
            continue
        where = f"methods[{i}] ({entry.get('label') or entry.get('name')})"
        if _runs_nowhere(entry, removed):
            dropped.append(f"{where}, which runs only at budgets {entry['budgets']}")
        else:
            dropped.extend(_drop_from_method(entry, removed, where))
            kept_methods.append(entry)
    data["methods"] = kept_methods
    return dropped


def apply_grid_overrides(raw: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``raw`` with ``overrides`` applied (:func:`bench.core.config.apply_overrides`)
    and the entries of removed budgets dropped (:func:`drop_removed_budgets`): the data and
    what was dropped."""
    data = apply_overrides(copy.deepcopy(raw), overrides)
    return data, drop_removed_budgets(raw, data, overrides)


def warn_dropped(dropped: list[str], overrides: list[str]) -> None:
    """One warning line naming what the budgets override dropped."""
    if not dropped:
        return
    source = [f"--set {text!r}" for text in overrides if parse_override(text)[0][0] == "budgets"][-1]
    warnings.warn(f"{source}: dropped the entries of budgets no longer run: {'; '.join(dropped)}", stacklevel=3)
