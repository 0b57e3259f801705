"""The documentation links only files in the repository.

Every Markdown link (inline ``[text](target)``, image ``![alt](target)`` and reference
``[label]: target``) in the README and the docs pages must point to a file or folder that exists in
the checkout, inside it; web links and in-page anchors are not checked. No page may mention a path
under ``shared/``: that folder is outside the repository and users do not have it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages += [ROOT / name / "README.md" for name in ("benchmarks", "adapters", "vectors")]
    return pages


def links_of(text: str) -> list[str]:
    """Link targets of a Markdown text, outside fenced code blocks."""
    prose = FENCE.sub("", text)
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in links_of(page.read_text(encoding="utf-8")):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (page.parent / path).resolve()
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            problems.append(f"{target} (no such file)")
    return problems


def test_the_link_parser_finds_inline_image_and_reference_links_outside_code() -> None:
    text = (
        'See [steering](docs/steering.md#modes) and ![plot](docs/a.png "title").\n'
        "[ref]: benchmarks/README.md\n"
        "```\n[not a link](nowhere.md)\n```\n"
    )
    assert links_of(text) == ["docs/steering.md#modes", "docs/a.png", "benchmarks/README.md"]


def test_a_missing_target_and_a_target_outside_the_repository_are_reported() -> None:
    page = ROOT / "docs" / "_probe.md"
    page.write_text("[gone](no_such_page.md) [out](../../elsewhere.md) [ok](evaluation.md)\n")
    try:
        assert broken_links(page) == [
            "no_such_page.md (no such file)",
            "../../elsewhere.md (outside the repository)",
        ]
    finally:
        page.unlink()


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_points_to_a_file_in_the_repository(page: Path) -> None:
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    assert broken_links(page) == []


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_mentions_a_path_under_shared(page: Path) -> None:
    lines = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"(?<![\w-])shared/", line)
    ]
    assert lines == []


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    reached: set[Path] = set()
    todo = [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached or page.suffix != ".md" or not page.exists():
            continue
        reached.add(page)
        for target in links_of(page.read_text(encoding="utf-8")):
            if not target.startswith(EXTERNAL + ("#",)):
                todo.append((page.parent / target.split("#", 1)[0]).resolve())
    unreached = {page.name for page in (ROOT / "docs").glob("*.md")} - {page.name for page in reached}
    assert unreached == set()
