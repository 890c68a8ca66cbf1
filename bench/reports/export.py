"""Every finished cell's set as a portable bundle: ``run_bench.py export RESULTS_DIR OUT``.

For each current record of the results directory (the grid of its ``grid.json``, by the rule
every table applies: the record's hash is the grid's and its set file is as written) this
writes ``OUT/<cell>.safetensors`` and ``OUT/<cell>.json`` (:mod:`bench.data.set_bundle`): the
set's tensors, and a card that says what the set is (dataset identity, text encoder, budget,
method and parameters, config hash) and what it scored (the per-seed numbers with their split,
protocol and selection rule, on every student). ``from-file`` reads a bundle back and, on the
same grid, gives the same numbers. For each dataset ``OUT/<dataset>.methods.yaml`` lists
``from-file`` entries for the bundles (one per method and seed, its budgets through
``budget_params``), to paste under a grid's ``methods:``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.core.config import ConfigError, from_dict
from bench.core.env import package_versions
from bench.core.io import check_writable_dir, file_digest, write_text_atomic
from bench.data.datasets import DatasetConfig
from bench.data.pairs import PairSet
from bench.data.set_bundle import BUNDLE_FORMAT, BUNDLE_VERSION, write_bundle
from bench.grid.record import CellRecord, timestamp
from bench.grid.store import MissingResultsError, ResultStore, read_records, set_output
from bench.protocol.presets import preset


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote (tensors files, in cell order) and the cells it left out, with why."""

    written: list[Path]
    skipped: dict[str, str]


def current_records(results_dir: Path) -> tuple[list[CellRecord], dict[str, str]]:
    """The records a table of ``results_dir`` shows (its ``grid.json``'s grid; without one,
    every record whose set file is as written), and why the others are left out."""
    store = ResultStore(results_dir)
    manifest = store.read_manifest()
    if manifest is not None:
        results = store.grid_results(manifest.cells)
        return results.records, dict(results.missing)
    return store.with_sets(read_records(results_dir))


def stored_set(store: ResultStore, record: CellRecord) -> tuple[PairSet, dict[str, float] | None]:
    """The pairs and learned step sizes of a cell's set file (``sets/<cell>.pt``, as
    :meth:`bench.grid.store.ResultStore.save_set` wrote it)."""
    output = set_output(torch.load(store.root / str(record.set_file), weights_only=False))
    return output.pairs, output.learned_lrs


def dataset_section(record: CellRecord) -> dict[str, Any] | None:
    """The record's dataset config section (None: a record without its config)."""
    for raw in (record.config or {}).get("datasets", []):
        try:
            if from_dict(DatasetConfig, raw).name == record.dataset:
                return raw
        except (ConfigError, ValueError, TypeError):
            continue
    return None


def numbers(record: CellRecord) -> list[dict[str, Any]]:
    """Every evaluation of the record (the headline first), each with its student, split,
    protocol, selection rule, seeds, recipe and per-seed numbers."""
    def one(student: str, protocol: str | None, recipe: Any, lrs: Any, per_seed: Any, summary: Any) -> dict[str, Any]:
        name = protocol or "suite"
        return {"student": student, "split": record.eval_split, "protocol": name,
                "selection": preset(name).selection, "eval_seeds": record.eval_seeds, "eval_recipe": recipe,
                "learned_lrs": lrs, "per_seed": per_seed, "summary": summary}

    out = [one("source", record.eval_protocol, record.eval_recipe, record.learned_lrs, record.per_seed, record.summary)]
    for ev in record.evaluations:
        out.append(one(ev.get("student", "source"), ev.get("protocol"), ev.get("eval_recipe"), ev.get("learned_lrs"),
                       ev.get("per_seed"), ev.get("summary")))
    return out


def card_of(record: CellRecord, pairs: PairSet, lrs: dict[str, float] | None, tensors: Path) -> dict[str, Any]:
    """The JSON card of a cell's bundle."""
    dataset = dataset_section(record) or {}
    size, digest = file_digest(tensors)
    return {
        "suite": {"name": "vl-distill-bench", "version": package_versions().get("vl-distill-bench"),
                  "git_commit": record.git_commit},
        "bundle": {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "tensors": tensors.name,
                   "bytes": size, "sha256": digest},
        "cell_id": record.cell_id, "cell_hash": record.cell_hash, "config_hash": record.config_hash,
        "dataset": {"name": record.dataset, "key": record.dataset_key, "config": dataset or None,
                    "split_sizes": record.split_sizes},
        "text_encoder": {"config": dataset.get("text_encoder"), "dim": int(pairs.text_emb.shape[1]),
                         "identity": "part of dataset.key (bench/data/text_encoder.py: model_identity)"},
        "model": (record.config or {}).get("model"),
        "budget": record.budget, "n_pairs": len(pairs),
        "images": {"count": int(pairs.images.shape[0]), "resolution": list(pairs.images.shape[-2:]),
                   "space": "pixels" if pairs.images.dtype == torch.uint8 else "normalised"},
        "method": {"name": record.method_name, "key": record.method, "kind": record.kind,
                   "params": record.method_params, "seed": record.method_seed, "info": record.method_info},
        "learned_lrs": lrs,
        "soft_targets": None if pairs.soft_targets is None else {"loss": pairs.soft_targets.loss},
        "numbers": numbers(record),
        "finished_at": record.finished_at, "exported_at": timestamp(),
    }


def from_file_entries(bundles: list[tuple[CellRecord, Path]]) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, one ``from-file`` method entry per (method, seed) of the bundles, each
    budget's file through ``budget_params`` (absolute paths: a grid reads them from anywhere),
    labelled by the method's name, or ``<method>.s<seed>`` where it has several seeds."""
    groups: dict[tuple[str, str, int | None], dict[int, Path]] = defaultdict(dict)
    for record, path in bundles:
        groups[(record.dataset, record.method, record.method_seed)][int(record.budget or 0)] = path
    seeds: dict[tuple[str, str], int] = defaultdict(int)
    for dataset, method, _ in groups:
        seeds[(dataset, method)] += 1
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (dataset, method, seed), files in groups.items():
        budgets = sorted(files)
        # The method's own name while it has one method seed here: the re-evaluated table then
        # keeps its ``random`` row and normalised score; ``<method>.s<seed>`` tells seeds apart.
        label = method if seeds[(dataset, method)] == 1 else f"{method}.s{seed}"
        entry: dict[str, Any] = {"name": "from-file", "label": label, "budgets": budgets,
                                 "params": {"path": str(files[budgets[0]].resolve()), "format": "bench"}}
        if len(budgets) > 1:
            entry["budget_params"] = {b: {"path": str(files[b].resolve())} for b in budgets[1:]}
        out[dataset].append(entry)
    return dict(out)


def export_sets(results_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> ExportResult:
    """Write every current cell's set of ``results_dir`` as a bundle into ``out``."""
    root, out = Path(results_dir), Path(out)
    if not root.is_dir():
        raise MissingResultsError(f"results directory {root} does not exist" if not root.exists()
                                  else f"{root} is a file, not a results directory")
    records, skipped = current_records(root)
    chosen = [r for r in records if r.set_file is not None]
    skipped.update({r.cell_id or r.name: "no set (the whole training set)" for r in records if r.set_file is None})
    check_writable_dir(out, "the export directory")  # before any set is read
    out.mkdir(parents=True, exist_ok=True)
    store, written, bundles = ResultStore(root), [], []
    for record in chosen:
        pairs, lrs = stored_set(store, record)
        tensors, _ = write_bundle(out / str(record.cell_id), pairs, lrs,
                                  lambda path, r=record, p=pairs, l=lrs: card_of(r, p, l, path))
        written.append(tensors)
        bundles.append((record, tensors))
    for dataset, entries in from_file_entries(bundles).items():
        text = ("# from-file entries for the bundles of this directory: paste under a grid's methods:\n"
                + yaml.safe_dump(entries, sort_keys=False))
        write_text_atomic(out / f"{dataset}.methods.yaml", text)
    return ExportResult(written, skipped)
