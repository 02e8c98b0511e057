"""The manifest's rows as the rest of the pipeline sees them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.manifest.states import DocState

DOCUMENT_COLUMNS = ("path, sha256, size, mtime_ns, state, attempts, error_category, error_message,"
                    " pages, media_type")


@dataclass(frozen=True)
class DocumentRow:
    path: str
    sha256: str | None
    size: int
    mtime_ns: int
    state: DocState
    attempts: int
    error_category: str | None
    error_message: str | None
    pages: int | None
    media_type: str | None = None

    @classmethod
    def from_sql(cls, row: tuple[Any, ...]) -> DocumentRow:
        return cls(row[0], row[1], row[2], row[3], DocState(row[4]), *row[5:])


@dataclass(frozen=True)
class PlannedDocument:
    path: str
    size: int
    mtime_ns: int
    media_type: str | None


@dataclass(frozen=True)
class SkippedFile:
    """A file the plan will not process: failed at planning, with the reason."""

    path: str
    category: str
    message: str
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class NewStat:
    """An unchanged file (same hash) whose size or mtime moved: its stat to remember."""

    path: str
    size: int
    mtime_ns: int
