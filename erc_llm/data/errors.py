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
        where = f"{self.path}" if row is None else f"{self.path}, row {row}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class SkippedRow:
    """One input row left out under an explicit `skip_invalid=True`, with why."""

    path: str
    row: int | str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}, row {self.row}: {self.reason}"
