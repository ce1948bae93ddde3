"""The README as data: its bash commands, its tables, its links and its generated blocks.

``.venv/bin/python -m tests.readme_doc --write`` regenerates the blocks between the README's
markers (the table of contents from its ``##`` headings, the make targets from ``make help``);
``tests/test_readme.py`` fails while they differ from what this writes.

Conventions of the README's ```bash blocks, which the test holds every command to:

- a command ending in ``# needs an AWS account`` talks to AWS: the test only dry-runs it (``make -n``);
- a command ending in ``# with make serve running`` calls the local server: the test starts one;
- a line ``# prints: TEXT`` after a command is a line it prints (``...`` stands for any text,
  ``<name>`` for a placeholder); TEXT starting with ``error:`` means the command fails;
- every other command runs as written, from the repository root.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
README: Final = ROOT / "README.md"

NEEDS_ACCOUNT: Final = "needs an AWS account"
NEEDS_SERVER: Final = "with make serve running"
PRINTS: Final = "# prints: "
# Generated blocks: name -> what fills it.
TOC: Final = "toc"
MAKE_HELP: Final = "make-help"
# The configuration key table is generated elsewhere and kept short there; the row limit here is for
# the tables written by hand.
CONFIG_KEYS: Final = "config-keys"
CONFIG_TABLE_HEADER: Final = "| key | default | meaning |"
MAX_ROW: Final = 300

_FENCE: Final = re.compile(r"^```(\S*)\s*$")
_PLACEHOLDER: Final = re.compile(r"<[A-Za-z][^<>]*>")


@dataclass(frozen=True)
class Command:
    """One command of a ```bash block, its continuation lines joined."""

    text: str  # as the shell gets it, without the trailing comment
    comment: str  # the trailing comment, without '#'
    line: int  # README line of its first line
    block: int  # which bash block (0: the first)
    prints: tuple[str, ...] = ()

    @property
    def needs_account(self) -> bool:
        return self.comment.rstrip().endswith(NEEDS_ACCOUNT)

    @property
    def needs_server(self) -> bool:
        return self.comment.rstrip().endswith(NEEDS_SERVER)

    @property
    def fails(self) -> bool:
        return any(line.startswith("error:") for line in self.prints)

    @property
    def placeholders(self) -> list[str]:
        return _PLACEHOLDER.findall(self.text)


def _block_lines(text: str) -> list[tuple[str, int, list[tuple[int, str]]]]:
    """Every fenced block: (language, index among blocks of that language, [(line number, line)])."""
    blocks: list[tuple[str, int, list[tuple[int, str]]]] = []
    counts: dict[str, int] = {}
    language: str | None = None
    body: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fence = _FENCE.match(line)
        if language is None and fence:
            language, body = fence.group(1), []
        elif language is not None and line.strip() == "```":
            blocks.append((language, counts.get(language, 0), body))
            counts[language] = counts.get(language, 0) + 1
            language = None
        elif language is not None:
            body.append((number, line))
    return blocks


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of one shell line: a '#' outside quotes, at the start or after a blank."""
    quote: str | None = None
    escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def commands(text: str) -> list[Command]:
    """Every command of the README's ```bash blocks, with the ``# prints:`` lines after it."""
    found: list[Command] = []
    for language, index, body in _block_lines(text):
        if language != "bash":
            continue
        pending: list[str] = []
        start = 0
        for number, line in body:
            if not pending and line.startswith(PRINTS):
                if not found or found[-1].block != index:
                    raise ValueError(f"README line {number}: '{PRINTS.strip()}' with no command before it")
                last = found[-1]
                found[-1] = Command(last.text, last.comment, last.line, last.block, (*last.prints, line[len(PRINTS) :]))
                continue
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            code, comment = split_comment(line)
            if not pending:
                start = number
            if code.endswith("\\") and not comment:
                pending.append(code[:-1].rstrip())
                continue
            pending.append(code.strip())
            found.append(Command(" ".join(part.strip() for part in pending), comment, start, index))
            pending = []
        if pending:
            raise ValueError(f"README line {start}: a continued command never ends")
    return found


def outside_code(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line that is not inside a fenced block."""
    inside = {number for _, _, body in _block_lines(text) for number, _ in body}
    fences = {number for number, line in enumerate(text.splitlines(), start=1) if line.startswith("```")}
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if n not in inside | fences]


def _marker(name: str, end: bool) -> str:
    return f"<!-- {name}:{'end' if end else 'begin'} -->"


def between_markers(text: str, name: str) -> set[int]:
    """Line numbers strictly between the ``name`` markers (empty when there are none)."""
    lines = text.splitlines()
    begin, end = _marker(name, False), _marker(name, True)
    starts = [i for i, line in enumerate(lines, start=1) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines, start=1) if line.strip() == end]
    if not starts or not ends:
        return set()
    return set(range(starts[0] + 1, ends[0]))


def table_rows(text: str) -> list[tuple[int, str]]:
    """Every table row written by hand: the configuration key table (generated) is left out."""
    skipped = between_markers(text, CONFIG_KEYS)
    rows: list[tuple[int, str]] = []
    in_config_table = False
    for number, line in outside_code(text):
        if not line.startswith("|"):
            in_config_table = False
            continue
        if line.strip() == CONFIG_TABLE_HEADER:
            in_config_table = True
        if not in_config_table and number not in skipped:
            rows.append((number, line))
    return rows


def headings(text: str, level: int = 2) -> list[str]:
    prefix = "#" * level + " "
    return [line[len(prefix) :].strip() for _, line in outside_code(text) if line.startswith(prefix)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(title) for level in (1, 2, 3, 4) for title in headings(text, level)}


def make_help() -> list[tuple[str, str]]:
    """(target, what it does) as ``make help`` prints them."""
    result = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    rows = [line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line]
    return [(target.strip(), what.strip()) for target, what in rows]


def toc_block(text: str) -> str:
    return "\n".join(f"- [{title}](#{slug(title)})" for title in headings(text))


def make_help_block() -> str:
    rows = [f"| `make {target}` | {what.replace('|', '/')} |" for target, what in make_help()]
    return "\n".join(["| target | what it does |", "|---|---|", *rows])


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = _marker(name, False), _marker(name, True)
    pattern = re.compile(rf"^{re.escape(begin)}\n.*?^{re.escape(end)}$", re.MULTILINE | re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README has no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1)


def render(text: str) -> str:
    """The README with its generated blocks as they should be."""
    text = replace_block(text, TOC, toc_block(text))
    return replace_block(text, MAKE_HELP, make_help_block())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.readme_doc", description=__doc__.split("\n\n")[1])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's generated blocks")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    rendered = render(text)
    if args.write:
        if rendered != text:
            README.write_text(rendered, encoding="utf-8")
        return 0
    if rendered != text:
        print(
            "README.md: generated blocks are stale; run .venv/bin/python -m tests.readme_doc --write", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
