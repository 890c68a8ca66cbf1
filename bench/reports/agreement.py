"""Does this grid order the methods as the papers do? Kendall's tau per budget.

A grid in the papers' regime is worth as much as the verdicts it shares with them. Per budget,
the methods that both this grid and the published results have are ranked twice, by our mean
recall (the mean of the six recalls, ``mean``) and by the published one, and the two rankings
are compared with Kendall's tau-b (1: same order, -1: reversed, 0: unrelated; ties count as
neither concordant nor discordant, as in scipy.stats.kendalltau's default). With n methods
there are n(n-1)/2 pairs, so at n = 5 one swapped pair moves tau by 0.2: read it with n.

The published number of a method at a budget comes from one source, chosen as the paper table
chooses it (:func:`bench.reports.tables.paper_table`): the preferred source when it publishes
the method at that budget, otherwise the first source of the file that does. Its mean is the
source's ``mean`` row, else the mean of its six recalls. The sources report under different
evaluation rules (``SOURCE_RULES``), which the caption names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from bench.reports.records import FULL, METRIC_ORDER, SOURCE, block_of, blocks
from bench.reports.tables import AS_PRINTED

RECALLS = tuple(m for m in METRIC_ORDER if m != "mean")


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired samples; None when undefined (fewer than two items, or
    one sample all ties). O(n^2): n is a handful of methods."""
    if len(x) != len(y):
        raise ValueError(f"samples differ in length: {len(x)} and {len(y)}")
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue  # tied in both: counted in neither correction's numerator (n1, n2 below)
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denominator == 0 else (concordant - discordant) / denominator


def published_means(reference: pd.DataFrame, dataset: str, pairs: str, source: str) -> dict[str, tuple[float, str]]:
    """{published method: (mean recall, source)} at ``pairs`` for ``dataset``, one source per
    method (``source`` first, then the file's order)."""
    rows = reference[(reference["dataset"] == dataset) & (reference["pairs"] == pairs)]
    order = list(dict.fromkeys(reference.loc[reference["dataset"] == dataset, "source"]))
    order = ([source] if source in order else []) + [s for s in order if s != source]
    out: dict[str, tuple[float, str]] = {}
    for method, block in rows.groupby("method", sort=False):
        for src in order:
            values = dict(zip(block.loc[block["source"] == src, "metric"], block.loc[block["source"] == src, "value"]))
            if "mean" in values:
                out[str(method)] = (float(values["mean"]), src)
            elif all(m in values for m in RECALLS):
                out[str(method)] = (float(np.mean([values[m] for m in RECALLS])), src)
            else:
                continue
            break
    return out


def rank_agreement(agg: pd.DataFrame, dataset: str, reference: pd.DataFrame, source: str = "vl-distill",
                   aliases: Mapping[str, str] | None = None, published_name: str | None = None) -> pd.DataFrame:
    """One row per budget of ``dataset`` (the grid's own student, its first protocol): the
    methods both have (n), Kendall's tau-b between our ordering by mean recall and the
    published one, and both orderings (best first). The reference's rows of ``dataset`` are
    the published ones (:func:`reference_as` relabels another dataset's); ``published_name``
    names them in the caption (default: ``dataset``). ``aliases``: our name -> the CSV's."""
    aliases = dict(aliases or {})
    published_dataset = published_name or dataset
    protocol = next((p for s, p in blocks(agg, dataset) if s == SOURCE), None)
    data = block_of(agg, dataset, SOURCE, protocol)
    data = data[(data["metric"] == "mean") & (data["budget"] != FULL)]
    rows = []
    for budget in sorted({int(b) for b in data["budget"]}):
        ours = {aliases.get(r.method, r.method): float(r.mean) for r in data[data["budget"] == budget].itertuples()}
        pubs = published_means(reference, dataset, str(budget), source)
        common = sorted(set(ours) & set(pubs))
        tau = kendall_tau_b([ours[m] for m in common], [pubs[m][0] for m in common])
        rows.append({
            "pairs": budget, "n": len(common),
            "tau": "\u2013" if tau is None else f"{tau:+.2f}",
            "ours (best first)": " > ".join(sorted(common, key=lambda m: (-ours[m], m))),
            "published (best first)": " > ".join(sorted(common, key=lambda m: (-pubs[m][0], m))),
            "sources": ", ".join(sorted({pubs[m][1] for m in common})),
        })
    table = pd.DataFrame(rows, columns=["pairs", "n", "tau", "ours (best first)", "published (best first)", "sources"])
    table = table.set_index("pairs")
    table.attrs["caption"] = (
        f"{dataset}: rank agreement with the published {published_dataset} results per budget: Kendall's tau-b "
        "between our ordering of the methods both have (by mean recall, final epoch) and the published one "
        "(1 = same order, -1 = reversed; n methods, n(n-1)/2 pairs; '–' where fewer than two methods are shared). "
        "Published numbers are one source per method (the preferred source first) under that source's evaluation rule.")
    table.attrs.update(dataset=dataset, kind="agreement", **{AS_PRINTED: list(table.columns)})
    return table


def reference_as(reference: pd.DataFrame, published: str, datasets: Sequence[str]) -> pd.DataFrame:
    """The published rows of dataset ``published`` relabelled as each of ``datasets`` (the
    grid's), so that a grid on the embedded generator in Flickr30K's shape is shown beside the
    Flickr30K numbers. Raises ValueError when the reference has no rows for ``published``."""
    rows = reference[reference["dataset"] == published]
    if rows.empty:
        have = ", ".join(sorted(reference["dataset"].unique()))
        raise ValueError(f"the reference has no rows for dataset {published!r}; it has {have}")
    return pd.concat([rows.assign(dataset=d) for d in datasets], ignore_index=True)
