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

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FULL = "full"
METRIC_ORDER = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "mean")
KNOWN_CORESETS = ("random", "herding", "kcenter", "forgetting")
COLUMNS = ["dataset", "method", "kind", "budget", "metric", "mean", "std", "n"]
_REQUIRED = ("dataset", "method", "per_seed")


class RecordError(ValueError):
    """A record file that cannot be read or lacks what a report needs (the message names it)."""


def _records_dir(results_dir: Path) -> Path:
    """``<results_dir>/records`` when it exists, else ``results_dir`` itself (a records dir)."""
    sub = results_dir / "records"
    return sub if sub.is_dir() else results_dir


def _check(record: Any, path: Path) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise RecordError(f"{path}: a result record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise RecordError(f"{path}: result record lacks {', '.join(missing)}")
    if not isinstance(record["per_seed"], list) or not all(
        isinstance(s, dict) and isinstance(s.get("metrics"), dict) for s in record["per_seed"]
    ):
        raise RecordError(f"{path}: 'per_seed' must be a list of objects with a 'metrics' object")
    return record


def load_records(results_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every finished record (``status == "ok"``) under ``results_dir``, sorted by file name.

    Skipped: hidden files (temporary files of atomic writes start with '.') and
    ``*.failed.json`` (crash reports of the runner). Records written before the ``status``
    field existed count as ok. Each returned dict gets ``_path`` (its file) so later errors can
    name it. Raises :class:`RecordError` naming the file for unreadable or invalid JSON.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results directory {root} does not exist")
    records = []
    for path in sorted(_records_dir(root).glob("*.json")):
        if path.name.startswith(".") or path.name.endswith(".failed.json"):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"{path}: cannot read result record: {exc}") from exc
        record = _check(record, path)
        if record.get("status", "ok") != "ok":
            continue
        records.append({**record, "_path": str(path)})
    return records


def infer_kind(record: dict[str, Any]) -> str:
    """The record's ``kind``; older records without it: no budget -> reference, the four
    built-in coresets -> coreset, anything else -> distillation."""
    if record.get("kind"):
        return str(record["kind"])
    if record.get("budget") is None:
        return "reference"
    return "coreset" if record["method"] in KNOWN_CORESETS else "distillation"


def _metric_key(metric: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(metric), "") if metric in METRIC_ORDER else (len(METRIC_ORDER), metric)


def _budget_key(budget: Any) -> tuple[int, float]:
    return (1, math.inf) if budget == FULL else (0, float(budget))


def aggregate(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table, one row per (dataset, method, kind, budget, metric): pooled mean, std, n.

    Raises :class:`RecordError` when two records claim the same cell (same dataset, method,
    budget and method seed: e.g. two configs writing into one results dir), because pooling
    them would silently double ``n``, and when one cell group mixes evaluation splits.
    """
    pooled: dict[tuple[str, str, str, Any, str], list[float]] = defaultdict(list)
    seen: dict[tuple[Any, ...], str] = {}
    splits: dict[tuple[Any, ...], tuple[Any, str]] = {}
    for rec in records:
        budget = FULL if rec.get("budget") is None else int(rec["budget"])
        cell = (rec["dataset"], rec["method"], budget, rec.get("method_seed"))
        where = rec.get("_path", f"record {rec['dataset']}/{rec['method']}/{budget}")
        if cell in seen:
            raise RecordError(f"{where} and {seen[cell]} are the same grid cell {cell}; keep one")
        seen[cell] = where
        split = rec.get("eval_split")
        if splits.setdefault(cell[:3], (split, where))[0] != split:
            other = splits[cell[:3]]
            raise RecordError(f"{where} (eval_split {split!r}) and {other[1]} (eval_split {other[0]!r}) "
                              f"would be pooled into one cell {cell[:3]}; report one split at a time")
        kind = infer_kind(rec)
        for seed in rec["per_seed"]:
            for metric, value in seed["metrics"].items():
                if value is not None:
                    pooled[(rec["dataset"], rec["method"], kind, budget, metric)].append(float(value))
    rows = []
    for (dataset, method, kind, budget, metric), values in pooled.items():
        arr = np.asarray(values, dtype=float)
        std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        rows.append([dataset, method, kind, budget, metric, float(arr.mean()), std, int(arr.size)])
    rows.sort(key=lambda r: (r[0], r[2] != "reference", r[1], _budget_key(r[3]), _metric_key(r[4])))
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
