"""Load finished result records and pool them into one long table of (cell group, metric).

Why pool: a grid can run several method seeds per (dataset, method, budget). Each record already
holds one metric value per evaluation seed; the honest spread of a method at a budget covers
both sources of randomness, so the per-seed values of all method seeds are pooled (mean, sample
std with ddof=1, and their count ``n``) instead of averaging per-record means.

Budget convention: the whole-train-set reference ("full", ``budget: null`` in its record) gets
``budget = "full"`` (a string, not NaN) so that it survives groupby, reads clearly in CSV output
and can never be confused with a missing value. The ``budget`` column therefore has dtype
``object`` (ints and the string ``"full"``); use :func:`numeric_budgets` for plotting.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from bench.grid.record import KNOWN_CORESETS, METRICS, CellRecord, RecordError
from bench.grid.store import read_records
from bench.protocol.selection import SelectionError, selected_metrics

__all__ = ["COLUMNS", "FULL", "METRIC_ORDER", "SOURCE", "RecordError", "aggregate", "block_of", "blocks",
           "load_records", "method_order", "numeric_budgets"]

FULL = "full"
SOURCE = "source"  # the grid's own student (bench.grid.spec.SOURCE_STUDENT)
METRIC_ORDER = METRICS  # the one metric list (bench.grid.record)
COLUMNS = ["dataset", "method", "kind", "budget", "student", "protocol", "split", "metric", "mean", "std", "n"]


def load_records(results_dir: str | os.PathLike[str]) -> list[CellRecord]:
    """Every finished record under ``results_dir`` (or a records directory), sorted by file
    name; see :func:`bench.grid.store.read_records`. For the records of one grid only (no stale or
    foreign ones) use :meth:`bench.grid.store.ResultStore.grid_results`."""
    return read_records(results_dir)


def recipe_of(record: CellRecord) -> str | None:
    """What every cell of one table must share: the dataset (content and text encoder), the
    student model and the evaluation protocol; None for records that do not say."""
    if record.config is None:
        return None
    from bench.core.io import stable_hash

    return stable_hash({"dataset": record.dataset_key, "model": record.config.get("model"),
                        "evaluation": record.config.get("evaluation")})


def check_one_recipe(records: Iterable[CellRecord]) -> None:
    """Raise :class:`RecordError` naming two records of one dataset made with different
    recipes (e.g. an old run's records left beside a new one's): a table must not mix them."""
    first: dict[str, tuple[str, CellRecord]] = {}
    for rec in records:
        recipe = recipe_of(rec)
        if recipe is None:
            continue
        seen = first.setdefault(rec.dataset, (recipe, rec))
        if seen[0] != recipe:
            raise RecordError(
                f"{rec.name} and {seen[1].name} were made with different recipes (dataset, model or evaluation "
                "differ) and would be mixed in one table; run the grid again (its grid.json then selects the "
                "current records) or keep one recipe's records in the directory")


def _as_record(record: CellRecord | Mapping[str, Any]) -> CellRecord:
    return record if isinstance(record, CellRecord) else CellRecord.from_json(dict(record), record.get("_path"))


def _metric_key(metric: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(metric), "") if metric in METRIC_ORDER else (len(METRIC_ORDER), metric)


def _budget_key(budget: Any) -> tuple[int, float]:
    return (1, math.inf) if budget == FULL else (0, float(budget))


def aggregate(records: Iterable[CellRecord | Mapping[str, Any]], select: str = "final") -> pd.DataFrame:
    """Long table, one row per (dataset, method, kind, budget, student, protocol, metric):
    pooled mean, std, n, with each evaluation run read under the selection rule ``select``
    (:mod:`bench.protocol.selection`: ``final``, ``val`` or ``test``; the last two read the
    test split of the runs' curves).

    Raises :class:`RecordError` when two records claim the same cell (same dataset, method,
    budget and method seed: e.g. two configs writing into one results dir), because pooling
    them would silently double ``n``, when one cell group mixes evaluation splits, and when a
    rule other than ``final`` meets a run without the curve it needs (the message names the record).
    """
    pooled: dict[tuple[str, str, str, Any, str, str, str, str], list[float]] = defaultdict(list)
    seen: dict[tuple[Any, ...], str] = {}
    splits: dict[tuple[Any, ...], tuple[Any, str]] = {}
    for rec in map(_as_record, records):
        budget = FULL if rec.budget is None else int(rec.budget)
        cell = (rec.dataset, rec.method, budget, rec.method_seed)
        if cell in seen:
            raise RecordError(f"{rec.name} and {seen[cell]} are the same grid cell {cell}; keep one")
        seen[cell] = rec.name
        split = rec.eval_split
        if splits.setdefault(cell[:3], (split, rec.name))[0] != split:
            other = splits[cell[:3]]
            raise RecordError(f"{rec.name} (eval_split {split!r}) and {other[1]} (eval_split {other[0]!r}) "
                              f"would be pooled into one cell {cell[:3]}; report one split at a time")
        for (student, protocol), runs in rec.runs().items():
            for seed in runs:
                try:
                    metrics, _ = selected_metrics(seed, select)
                except SelectionError as exc:
                    raise RecordError(f"{rec.name}: cannot report the {select!r} selection: {exc}") from None
                for metric, value in metrics.items():
                    if value is not None:
                        key = (rec.dataset, rec.method, rec.inferred_kind(), budget, student, protocol,
                               split if select == "final" else "test", metric)
                        pooled[key].append(float(value))
    rows = []
    for key, values in pooled.items():
        arr = np.asarray(values, dtype=float)
        std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        rows.append([*key, float(arr.mean()), std, int(arr.size)])
    # Students and protocols in the order the records list them (the headline's first), not alphabetically.
    order = {sp: i for i, sp in enumerate(dict.fromkeys((r[4], r[5]) for r in rows))}
    rows.sort(key=lambda r: (r[0], r[2] != "reference", r[1], _budget_key(r[3]), r[4] != SOURCE, order[(r[4], r[5])],
                             _metric_key(r[7])))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["budget"] = frame["budget"].astype(object)
    return frame


def method_order(agg: pd.DataFrame) -> list[str]:
    """Methods in the papers' column order: random, herding, kcenter, forgetting, the other
    coresets alphabetically, then distillation methods alphabetically (reference rows, i.e.
    ``full``, are left out: tables and plots show them separately)."""
    kinds = dict(zip(agg["method"], agg["kind"]))
    known = [m for m in KNOWN_CORESETS if m in kinds and kinds[m] != "reference"]
    others = sorted(m for m, k in kinds.items() if k == "coreset" and m not in known)
    distill = sorted(m for m, k in kinds.items() if k not in ("coreset", "reference") and m not in known)
    return known + others + distill


def numeric_budgets(agg: pd.DataFrame) -> pd.DataFrame:
    """Rows with a numeric budget (the full reference removed), ``budget`` as int."""
    sub = agg[agg["budget"] != FULL].copy()
    sub["budget"] = sub["budget"].astype(int)
    return sub


def blocks(agg: pd.DataFrame, dataset: str) -> list[tuple[str, str]]:
    """The (student, protocol) pairs of a dataset's results, the grid's own student first and
    protocols in the order the records list them."""
    data = agg[(agg["dataset"] == dataset) & (agg["kind"] != "reference")]
    if data.empty:
        data = agg[agg["dataset"] == dataset]
    pairs = list(dict.fromkeys(zip(data["student"], data["protocol"])))
    students = list(dict.fromkeys(s for s, _ in pairs))
    protocols = list(dict.fromkeys(p for _, p in pairs))
    return sorted(pairs, key=lambda sp: (sp[0] != SOURCE, students.index(sp[0]), protocols.index(sp[1])))


def block_of(agg: pd.DataFrame, dataset: str, student: str = SOURCE, protocol: str | None = None) -> pd.DataFrame:
    """The rows of one (student, protocol) block; the whole-set reference of that student
    whatever its protocol (presets change how budget-sized sets are trained, not the full row)."""
    data = agg[(agg["dataset"] == dataset) & (agg["student"] == student)]
    if protocol is not None:
        data = data[(data["protocol"] == protocol) | (data["kind"] == "reference")]
    return data
