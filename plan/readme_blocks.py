"""Generated blocks of README.md: the text between a ``<!-- name:begin -->`` and ``<!-- name:end -->`` pair.

The config table (``plan.config.reference``) and the idle cost (``plan.costs``) are written into
README.md by their commands and checked by tests, so the README cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

README: Final = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Block:
    """One generated block, named by its markers."""

    name: str

    @property
    def begin(self) -> str:
        return f"<!-- {self.name}:begin -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.name}:end -->"

    def held(self, text: str) -> str | None:
        """What ``text`` holds between the markers, or None without them."""
        if self.begin not in text or self.end not in text:
            return None
        return text.split(self.begin, 1)[1].split(self.end, 1)[0].strip("\n")

    def written(self, text: str, block: str) -> str:
        """``text`` with ``block`` between the markers."""
        head, rest = text.split(self.begin, 1)
        return f"{head}{self.begin}\n{block}\n{self.end}{rest.split(self.end, 1)[1]}"
