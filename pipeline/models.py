"""Small typed records passed between stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceFile:
    """A file found by discovery, before any content is read beyond its magic bytes."""

    path: Path  # absolute path of the input file
    rel: str  # path relative to the input root, with '/' separators
    size: int
    mtime_ns: int
    media_type: str  # sniffed from content, e.g. "application/pdf", "image/png"


@dataclass(frozen=True)
class Chunk:
    """One request's worth of a document: a standalone PDF of consecutive pages, or one image.

    `first_page` is the 0-based position of the chunk's first page in the source document;
    `page_count` the number of pages in `data`.
    """

    doc_rel: str
    index: int
    first_page: int
    page_count: int
    media_type: str
    data: bytes
    sha256: str

    @property
    def last_page(self) -> int:
        """One past the chunk's last page, as a position in the source document."""
        return self.first_page + self.page_count

    @property
    def is_pdf(self) -> bool:
        return self.media_type == "application/pdf"
