"""Is our number comparable with the published one? The setting a recall was measured in.

Two recalls compare only when four things agree: the test split (its images and captions: the
chance of a hit at K falls with every candidate added), the image tower (architecture, and
whether it is trained or frozen), the image resolution, and the evaluation protocol (how the
student is trained and which epoch is read). The published setting of each (source, dataset)
is data (``reference/paper_settings.csv``, merged into the bundled reference by
:func:`attach_settings`; a reference CSV of one's own may carry the same columns); ours is read
from the records' resolved config (:func:`our_setting`). :func:`comparability_note` says, for
the caption of a table, which of the four differ, or that they agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.grid.record import CellRecord
from bench.protocol.presets import PRESETS
from bench.protocol.selection import SELECTION_LABELS

BUNDLED_SETTINGS = Path(__file__).resolve().parent / "reference" / "paper_settings.csv"
#: The optional columns of a reference CSV that describe the published setting (per source and dataset).
SETTING_COLUMNS = ("test_images", "test_captions", "image_tower", "tower_training", "resolution", "protocol", "rule")


@dataclass(frozen=True)
class Setting:
    """What a recall was measured in; None where unknown. ``split``/``images``/``captions``:
    the evaluation split and its size; ``tower``: the image tower's architecture (a timm name,
    ``convnet ...``, ``hf <dir>``) and ``training`` (trained | frozen | lora); ``resolution`` in
    pixels; ``protocol``: the preset of :mod:`bench.protocol.presets` that reproduces it (None
    for a published rule no preset reproduces), ``selection`` its epoch rule and ``rule`` the
    published rule in words."""

    split: str | None = None
    images: int | None = None
    captions: int | None = None
    tower: str | None = None
    training: str | None = None
    resolution: int | None = None
    protocol: str | None = None
    selection: str | None = None
    rule: str | None = None


def attach_settings(ref: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The bundled reference with its published settings as columns (a left join on source and
    dataset); any other reference file is returned unchanged (its own setting columns, if any)."""
    if Path(path).resolve() != BUNDLED_SETTINGS.with_name("paper_results.csv"):
        return ref
    settings = pd.read_csv(BUNDLED_SETTINGS, dtype=str, keep_default_na=False)
    return ref.drop(columns=[c for c in SETTING_COLUMNS if c in ref.columns]).merge(
        settings, on=["source", "dataset"], how="left")


def _int(value: Any) -> int | None:
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()
    return int(float(text)) if text else None


def _text(value: Any) -> str | None:
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()
    return text or None


def published_setting(ref: pd.DataFrame, source: str, dataset: str) -> Setting | None:
    """The setting a source published ``dataset`` in, from the reference's setting columns;
    None when the reference has none of them for it."""
    rows = ref[(ref["source"] == source) & (ref["dataset"] == dataset)]
    if rows.empty or not any(c in ref.columns for c in SETTING_COLUMNS):
        return None
    first = rows.iloc[0]
    get = lambda c: first[c] if c in rows.columns else None  # noqa: E731
    protocol = _text(get("protocol"))
    setting = Setting(split="test", images=_int(get("test_images")), captions=_int(get("test_captions")),
                      tower=_text(get("image_tower")), training=_text(get("tower_training")),
                      resolution=_int(get("resolution")), protocol=protocol,
                      selection=PRESETS[protocol].selection if protocol in PRESETS else None,
                      rule=_text(get("rule")))
    return None if setting == Setting(split="test") else setting


def tower_of(encoder: dict[str, Any]) -> tuple[str, str]:
    """(architecture, training) of an ``image_encoder`` config section."""
    name = encoder.get("name", "convnet")
    if name == "timm":
        arch = str(encoder.get("timm_name"))
    elif name == "hf":
        arch = f"hf {Path(str(encoder.get('path'))).name}"
    else:
        arch = f"convnet (width {encoder.get('width', 128)}, depth {encoder.get('depth', 3)})"
    if name in ("timm", "hf") and encoder.get("pretrained", True) is False:
        arch += ", not pretrained"
    training = "frozen" if encoder.get("freeze") else ("lora" if encoder.get("lora") else "trained")
    return arch, training


def _dataset_section(config: dict[str, Any], dataset: str) -> dict[str, Any] | None:
    for section in config.get("datasets") or []:
        source = section.get("source", "embedded")
        name = "embedded" if source == "embedded" else (section.get("karpathy") or {}).get("name")
        if name == dataset:
            return section
    return None


def our_setting(records: Sequence[CellRecord], dataset: str, student: str = "source",
                protocol: str | None = None, select: str = "final") -> Setting:
    """Our setting of one table block, from the first record of ``dataset`` that has a config
    (the table shows records of one recipe); ``protocol`` None: the records' headline protocol.
    Sizes come from the record's ``split_sizes``, or for the embedded dataset from its config;
    fields a record does not say stay None."""
    first = next((r for r in records if r.dataset == dataset), None)
    protocol = protocol or (first.eval_protocol if first is not None else None) or "suite"
    rec = next((r for r in records if r.dataset == dataset and r.config), None)
    if rec is None:
        return Setting(split=first.eval_split if first else None, protocol=protocol, selection=select)
    config, split = rec.config, rec.eval_split or "test"
    section = _dataset_section(config, dataset) or {}
    images = captions = resolution = None
    size = rec.split_sizes.get(split)
    if size:
        images, captions = size.get("images"), size.get("captions")
    if section.get("source", "embedded") == "embedded":
        spec = section.get("embedded") or {}
        if images is None and f"n_{split}_images" in spec:
            images = int(spec[f"n_{split}_images"])
            captions = images * int(spec.get("captions_per_image", 5))
        resolution = spec.get("resolution", 32)
    else:
        resolution = (section.get("karpathy") or {}).get("resolution", 224)
    model = config.get("model") or {}
    if student != "source":
        model = ((config.get("evaluation") or {}).get("students") or {}).get(student) or {}
    tower, training = tower_of(model.get("image_encoder") or {})
    return Setting(split=split, images=images, captions=captions, tower=tower, training=training,
                   resolution=None if resolution is None else int(resolution), protocol=protocol, selection=select)


def _size(images: int | None, captions: int | None) -> str:
    if images is None:
        return "size not recorded"
    return f"{images:,} images / {captions:,} captions" if captions is not None else f"{images:,} images"


def _norm(name: str | None) -> str:
    return (name or "").lower().replace("-", "_")


def differences(ours: Setting, published: Setting) -> list[str]:
    """One phrase per aspect in which ``ours`` differs from ``published`` (test split, image
    tower, resolution, protocol); an aspect the published setting does not give is skipped."""
    out = []
    if published.images is not None:
        if ours.split != "test":
            out.append(f"we evaluate on the {ours.split} split ({_size(ours.images, ours.captions)}), "
                       f"the paper on the test split ({_size(published.images, published.captions)})")
        elif ours.images is None:
            out.append("our test split's size is not recorded "
                       f"(the paper's: {_size(published.images, published.captions)})")
        elif (ours.images, ours.captions) != (published.images, published.captions if published.captions is not None
                                                else ours.captions):
            out.append(f"test split of {_size(ours.images, ours.captions)}, "
                       f"the paper's {_size(published.images, published.captions)}")
    if published.tower is not None and (
            _norm(ours.tower) != _norm(published.tower)
            or (published.training is not None and ours.training != published.training)):
        theirs = published.tower + (f", {published.training}" if published.training else "")
        out.append(f"image tower {ours.tower}, {ours.training} (the paper's: {theirs})" if ours.tower else
                   f"our image tower is not recorded (the paper's: {theirs})")
    if published.resolution is not None and ours.resolution != published.resolution:
        out.append(f"resolution {ours.resolution} px (the paper's: {published.resolution} px)" if ours.resolution
                   else f"our resolution is not recorded (the paper's: {published.resolution} px)")
    if published.rule is not None or published.protocol is not None:
        same = (published.protocol is not None and ours.protocol == published.protocol
                and ours.selection == published.selection)
        if not same:
            how = (f"the {published.protocol} preset reproduces it" if published.protocol
                   else "no preset of this suite reproduces it")
            out.append(f"protocol {ours.protocol or '?'}, {SELECTION_LABELS.get(ours.selection or '', ours.selection)} "
                       f"(the paper's: {published.rule or published.protocol}; {how})")
    return out


def comparability_note(ours: Setting | None, ref: pd.DataFrame, dataset: str, sources: Iterable[str],
                       file: str) -> str:
    """The sentences a table's caption gets about the published numbers beside ours: that
    ``file`` has none for ``dataset``, or per source used, what differs from its setting."""
    have = sorted(set(ref["dataset"]))
    if dataset not in have:
        return (f" No published numbers for dataset {dataset} in {file} (it has {', '.join(have) or 'none'}): "
                "no (paper) columns.")
    sources = list(sources)
    if not sources:
        return f" No published numbers for the methods of this table on {dataset} in {file}."
    if ours is None:
        return " Our setting is not known here (no records): not compared with the published one."
    parts = []
    for source in sources:
        published = published_setting(ref, source, dataset)
        if published is None:
            parts.append(f" {file} does not give {source}'s published setting ({', '.join(SETTING_COLUMNS)}): "
                         "not compared.")
            continue
        diffs = differences(ours, published)
        parts.append(f" Setting differs from {source}'s published one, so the numbers do not compare directly: "
                     + "; ".join(diffs) + "." if diffs else
                     f" Same setting as {source}'s published one (test split, image tower, resolution, protocol).")
    return "".join(parts)
