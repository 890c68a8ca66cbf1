"""The project documents itself: docs/ exists, the README points to each page, the pages'
links resolve, and the package cites no document outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = ("architecture.md", "protocol.md", "methods.md", "environment.md", "recipes.md", "guide.md", "results.md",
         "tuning.md", "real_data.md", "regime.md")


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


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (not `-` and `_`), spaces -> `-`."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("source", ["README.md", *(f"docs/{p}" for p in PAGES)])
def test_links_and_their_anchors_resolve(source):
    """A link from the README or a page names a file that exists and, with `#anchor`, a heading
    that it has (the README's sections moved to docs/guide.md and docs/results.md)."""
    path = REPO / source
    text = path.read_text()
    for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]*))?\)", text):
        linked = (path.parent / target) if target else path
        assert linked.exists(), f"{source} links to missing {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked.read_text()), f"{source} links to {target}#{anchor}, no such heading"
