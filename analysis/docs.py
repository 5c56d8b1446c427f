"""Generated blocks of the documentation: tables pasted from report snapshots, never by hand.

    python -m analysis.docs            # rewrite every generated block in README.md and docs/
    python -m analysis.docs --check    # exit 1, listing the stale blocks, if any is out of date

A block is delimited by two HTML comments, which Markdown does not render::

    <!-- generated: docs/compare/summary.md table -->
    ...replaced by the first Markdown table of docs/compare/summary.md...
    <!-- end generated -->

The path after ``generated:`` is relative to the repository root. Without a selector the
whole file goes in (trailing blank lines dropped); the selector ``body`` leaves out the file's
title (a first line starting with ``# ``, and the blank lines after it), so that a report's
``# <experiment>`` heading does not break the page's outline; ``table`` keeps only the file's
first Markdown table (its consecutive lines starting with ``|``), for a page that says the
rest in its own words. Everything outside the blocks is
left byte for byte as it was.

``make snapshot`` copies the reports of ``make reproduce`` into ``docs/<study>/`` and then runs
this command, so the README and the docs always show the snapshot's figures.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START = re.compile(r"^<!-- generated: (?P<path>\S+)(?: (?P<selector>\w+))? -->$")
END = "<!-- end generated -->"
SELECTORS = ("table", "body")


class DocsError(ValueError):
    """A generated block that cannot be filled: unclosed, unknown selector, missing file."""


@dataclass(frozen=True)
class Block:
    """One generated block of a page.

    Attributes:
        page: the Markdown file holding the block.
        line: 1-based line number of its start marker in ``page``.
        source: the file it is generated from, relative to the repository root.
        selector: ``None`` (the whole file), ``"body"`` (without its title) or ``"table"``
            (its first table).
    """

    page: Path
    line: int
    source: str
    selector: str | None


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that may hold generated blocks: ``README.md`` and every ``.md`` under ``docs/``."""
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    return found + sorted((root / "docs").rglob("*.md"))


def first_table(text: str) -> str:
    """The first Markdown table of ``text``: its first run of lines starting with ``|``.

    Raises:
        DocsError: if ``text`` has no line starting with ``|``.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        raise DocsError("has no Markdown table")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end])


def body(text: str) -> str:
    """``text`` without its title: a first line starting with ``# `` and the blank lines after."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]
    return "\n".join(lines)


def content(block: Block, root: Path = ROOT) -> str:
    """What ``block`` must hold: its source file (its body, its first table), no trailing newline.

    Raises:
        DocsError: naming the page, line and file, if the file is missing or has no table.
    """
    where = f"{block.page.relative_to(root)}:{block.line}"
    path = root / block.source
    if not path.is_file():
        raise DocsError(
            f"{where}: {block.source} does not exist (a generated block names it; "
            "make reproduce and make snapshot write the report snapshots)"
        )
    text = path.read_text(encoding="utf-8").rstrip()
    if block.selector == "table":
        try:
            return first_table(text)
        except DocsError as error:
            raise DocsError(f"{where}: {block.source} {error}") from None
    if block.selector == "body":
        return body(text)
    return text


def render(page: Path, root: Path = ROOT) -> tuple[str, list[Block]]:
    """The text of ``page`` with every generated block refilled, and the blocks it holds.

    Raises:
        DocsError: one line naming the page and line, for an unclosed or nested block, an
            unknown selector, or a missing source file (see :func:`content`).
    """
    lines = page.read_text(encoding="utf-8").split("\n")
    out: list[str] = []
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        match = START.match(line.strip())
        i += 1
        if not match:
            continue
        block = Block(page, i, match["path"], match["selector"])
        where = f"{page.relative_to(root)}:{block.line}"
        if block.selector is not None and block.selector not in SELECTORS:
            raise DocsError(
                f"{where}: unknown selector {block.selector!r} (known: {', '.join(SELECTORS)})"
            )
        end = i
        while end < len(lines) and lines[end].strip() != END:
            if START.match(lines[end].strip()):
                raise DocsError(f"{where}: block not closed by {END!r} before the next one")
            end += 1
        if end == len(lines):
            raise DocsError(f"{where}: block not closed by {END!r}")
        out.append(content(block, root))
        out.append(lines[end])
        blocks.append(block)
        i = end + 1
    return "\n".join(out), blocks


def stale(root: Path = ROOT, paths: Iterable[Path] | None = None) -> list[Path]:
    """The pages whose generated blocks differ from their source files (nothing is written)."""
    return [p for p in (paths or pages(root)) if render(p, root)[0] != p.read_text("utf-8")]


def update(root: Path = ROOT, paths: Iterable[Path] | None = None) -> list[Path]:
    """Refill every generated block in place; return the pages that changed."""
    changed = []
    for page in paths or pages(root):
        text, _ = render(page, root)
        if text != page.read_text(encoding="utf-8"):
            page.write_text(text, encoding="utf-8")
            changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 done (or up to date), 1 stale with ``--check``, 2 an error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a block is out of date"
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        found = stale(root) if args.check else update(root)
    except DocsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for page in found:
        verb = "out of date" if args.check else "updated"
        print(f"{page.relative_to(root)}: {verb}")
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
