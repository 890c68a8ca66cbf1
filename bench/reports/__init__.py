"""Reports: a grid's result records -> the papers' tables (markdown, LaTeX, CSV) and plots.
Records are the one source of truth: nothing here is edited by hand (docs/architecture.md)."""
