"""Reports: result records -> the papers' tables, recall-vs-budget plots and image grids.

Records are the single source of truth (DESIGN.md section 6): every table and plot here is
derived from ``<results_dir>/records/*.json`` and never edited by hand.
"""
