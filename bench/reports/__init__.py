"""Reports: result records -> the papers' tables, recall-vs-budget plots and image grids.

Records are the single source of truth (docs/architecture.md): every table and plot here is
derived from ``<results_dir>/records/*.json`` and never edited by hand.
"""
