"""Errors raised on malformed corpus input; every one names the file and the row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DataFormatError(ValueError):
    """A corpus file could not be read as documented; the message names the file and the row."""

    def __init__(self, path: str | Path, row: int | str | None, message: str) -> None:
        self.path = str(path)
        self.row = row
        self.reason = message
        super().__init__(f"{location(self.path, row)}: {message}")


def location(path: str | Path, row: int | str | None) -> str:
    """'file, row 17 (line 18)', 'file, line 3' (JSONL), 'file, header' or just 'file'."""
    if row is None:
        return str(path)
    text = str(row)
    if text.startswith(("line", "header", "episodes")):
        return f"{path}, {text}"
    return f"{path}, row {text}"


@dataclass(frozen=True)
class SkippedRow:
    """One input row left out under an explicit `skip_invalid=True`, with why."""

    path: str
    row: int | str
    reason: str

    def __str__(self) -> str:
        return f"{location(self.path, self.row)}: {self.reason}"
