"""How each method's parameters were chosen, from the records' ``tuning`` blocks: the sentence
every table caption carries, and ``tables/<dataset>_tuning.*`` (the chosen values per method and
budget, their val mean, the trials and their cost, and the audit where one ran)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from bench.grid.record import CellRecord
from bench.reports.tables import AS_PRINTED


def tuning_caption(records: Sequence[CellRecord]) -> str:
    """"Parameters tuned on val: ..." or "Parameters: the config's fixed recipe ..."."""
    methods = [r for r in records if r.budget is not None]
    tuned = [r for r in methods if r.tuning]
    if not tuned:
        return "Parameters: the config's fixed recipe (not tuned on this dataset's val split)."
    runs = sorted({int(r.tuning["runs"]) for r in tuned})
    samplers = sorted({str(r.tuning["sampler"]) for r in tuned})
    seeds = sorted({len(r.tuning.get("eval_seeds") or []) for r in tuned})
    fixed = sorted({r.method for r in methods if not r.tuning})
    text = (f"Parameters tuned on val: {'/'.join(map(str, runs))} trials (method runs) per method and budget "
            f"({', '.join(samplers)} sampler; {'/'.join(map(str, seeds))} evaluation seed(s) per trial; "
            "the best val mean chosen, then evaluated on test)")
    return text + (f"; fixed recipe: {', '.join(fixed)}." if fixed else ".")


def _values(values: dict | None) -> str:
    if not values:
        return "(no parameters)"
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def tuning_table(records: Sequence[CellRecord], dataset: str) -> pd.DataFrame | None:
    """One row per tuned (method, budget) of ``dataset`` (method seeds share one choice), or
    None when no record was tuned."""
    rows = {}
    for r in records:
        if r.dataset != dataset or not r.tuning or r.budget is None:
            continue
        t = r.tuning
        trials = t.get("trials") or []
        chosen = next((x for x in trials if x.get("label") == t.get("chosen_label")), None)
        audit = t.get("audit") or {}
        recipe = next((x for x in trials if t.get("recipe") is not None and x.get("params") == t["recipe"]), None)
        row = {
            "chosen": _values(t.get("chosen")),
            "val mean": "–" if chosen is None or chosen.get("val_mean") is None else
                        f"{chosen['val_mean']:.2f} ± {chosen.get('val_std') or 0:.2f}",
            "recipe val": "–" if recipe is None or recipe.get("val_mean") is None else f"{recipe['val_mean']:.2f}",
            "trials": len(trials),
            "failed": sum(1 for x in trials if x.get("val_mean") is None),
            "cost s": round(float(t.get("cost_s") or 0.0)),
        }
        if audit:
            tau = audit.get("kendall_tau")
            row["tau val-test"] = "–" if tau is None else f"{tau:.2f}"
            lost = audit.get("lost")
            row["test lost"] = "–" if lost is None else f"{lost:.2f}"
        rows[(r.method, r.budget)] = row
    if not rows:
        return None
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["method", "pairs"])
    table = table.sort_index(level=["pairs", "method"])
    first = next(r.tuning for r in records if r.dataset == dataset and r.tuning)
    table.attrs["caption"] = (
        f"{dataset}: parameters chosen on val ({first['sampler']} sampler, seed {first['seed']}, up to "
        f"{first['runs']} method runs per method and budget, a trajectory method's run evaluated at each "
        "iterations value of its space, so trials counts evaluations; val mean ± std of the chosen trial over its "
        f"{len(first.get('eval_seeds') or [])} evaluation seed(s)); recipe val = the config's own values, the first "
        "trial (– when they lie outside the space); cost s = seconds of all its trials"
        + ("; audit: Kendall's tau between the trials' val and test means, and the test mean the val choice "
           "lost against the best trial on test (measured after the choice; never used for it)"
           if any("tau val-test" in row for row in rows.values()) else "") + ".")
    table.attrs.update(dataset=dataset, kind="tuning", **{AS_PRINTED: list(table.columns)})
    return table
