"""The project documents itself: docs/ exists, the README points to each page, the pages'
links resolve, and the package cites no document outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = ("architecture.md", "protocol.md", "methods.md", "environment.md", "recipes.md")


def test_readme_points_to_every_page():
    readme = (REPO / "README.md").read_text()
    for page in PAGES:
        assert f"](docs/{page}" in readme, page


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "docs").glob("*.md")))
def test_relative_links_resolve(page):
    text = (REPO / "docs" / page).read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (REPO / "docs" / target).exists(), f"{page} links to missing {target}"


def test_no_citation_of_a_document_outside_the_repository():
    files = [REPO / "README.md", REPO / "pyproject.toml", *REPO.glob("docs/*.md"),
             *REPO.glob("bench/**/*.py"), *REPO.glob("methods/**/*.py"), *REPO.glob("configs/*.yaml")]
    citing = [str(p.relative_to(REPO)) for p in files if "DESIGN.md" in p.read_text(encoding="utf-8")]
    assert citing == []
