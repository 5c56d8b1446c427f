"""The documentation: generated blocks (analysis.docs) and relative links."""

import re
from pathlib import Path

import pytest

from analysis import docs

ROOT = Path(__file__).resolve().parent.parent

# Pages being written in other branches at the time of writing; a link to one of them is allowed
# to dangle until they are merged (then this list is emptied).

PAGE = """# Title

Before the block, kept as is.
<!-- generated: data/table.md -->
old content
that is stale
<!-- end generated -->
Between.

<!-- generated: data/table.md table -->
<!-- end generated -->
<!-- generated: data/table.md body -->
<!-- end generated -->
After, kept as is.
"""

SOURCE = "# heading\n\nsweep line\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\nA note.\n\n"


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.md").write_text(SOURCE)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(PAGE)
    return tmp_path


def test_a_block_is_replaced_by_the_file_and_the_rest_is_untouched(repo):
    page = repo / "docs" / "page.md"
    assert docs.update(repo) == [page]
    expected = (
        PAGE.replace(
            "old content\nthat is stale\n",
            "# heading\n\nsweep line\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\nA note.\n",
        )
        .replace("table -->\n<!-- end", "table -->\n| a | b |\n| --- | --- |\n| 1 | 2 |\n<!-- end")
        .replace(
            "body -->\n<!-- end",
            "body -->\nsweep line\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\nA note.\n<!-- end",
        )
    )
    assert page.read_text() == expected
    # Idempotent: a second pass changes nothing and --check finds nothing stale.
    assert docs.update(repo) == []
    assert docs.main(["--root", str(repo), "--check"]) == 0


def test_check_reports_a_stale_block_and_writes_nothing(repo, capsys):
    page = repo / "docs" / "page.md"
    assert docs.main(["--root", str(repo), "--check"]) == 1
    assert capsys.readouterr().out == "docs/page.md: out of date\n"
    assert page.read_text() == PAGE


def test_a_missing_file_is_one_clear_line(repo, capsys):
    (repo / "data" / "table.md").unlink()
    assert docs.main(["--root", str(repo)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: docs/page.md:4: data/table.md does not exist (a generated block names it; "
        "make reproduce and make snapshot write the report snapshots)\n"
    )
    assert (repo / "docs" / "page.md").read_text() == PAGE


def test_an_unclosed_block_and_an_unknown_selector_are_errors(repo):
    page = repo / "docs" / "page.md"
    page.write_text("x\n<!-- generated: data/table.md -->\nno end\n")
    with pytest.raises(docs.DocsError, match=r"^docs/page.md:2: block not closed"):
        docs.update(repo)
    page.write_text("<!-- generated: data/table.md rows -->\n<!-- end generated -->\n")
    with pytest.raises(docs.DocsError, match=r"^docs/page.md:1: unknown selector 'rows'"):
        docs.update(repo)


def test_table_selector_needs_a_table(repo):
    (repo / "data" / "table.md").write_text("no table here\n")
    with pytest.raises(docs.DocsError, match="data/table.md has no Markdown table"):
        docs.update(repo)


def test_every_generated_block_of_the_repository_is_up_to_date():
    """A hand edit inside a block, or a snapshot not pasted, fails here: python -m analysis.docs."""
    blocks = [b for page in docs.pages(ROOT) for b in docs.render(page, ROOT)[1]]
    assert blocks, "the README and docs/ should show generated tables"
    assert [str(p.relative_to(ROOT)) for p in docs.stale(ROOT)] == []


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(page: Path) -> list[str]:
    """The relative link targets of a Markdown page, outside code blocks (anchors kept)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [
        target
        for target in LINK.findall(text)
        # a URL (http:, mailto:) or an anchor on the same page
        if not (re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"))
    ]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_the_link_finder_skips_urls_anchors_and_code(tmp_path):
    page_text = (
        "[a](docs/x.md#part) ![f](img/f.png) [u](https://example.org) [s](#top)\n"
        "```\n[c](not/a/link.md)\n```\n"
    )
    page = tmp_path / "page.md"
    page.write_text(page_text)
    assert relative_links(page) == ["docs/x.md#part", "img/f.png"]


def test_anchors_follow_github(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n## `numpy_backprop`: the NumPy reference\n### A job killed with kill -9\n"
    )
    assert anchors(page) == {
        "title",
        "numpy_backprop-the-numpy-reference",
        "a-job-killed-with-kill--9",
    }


@pytest.mark.parametrize("page", docs.pages(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page):
    missing = []
    for target in relative_links(page):
        name, _, anchor = target.partition("#")
        path = (page.parent / name).resolve()
        if not path.exists():
            missing.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            missing.append(target)  # the file exists, the heading does not
    assert missing == []
