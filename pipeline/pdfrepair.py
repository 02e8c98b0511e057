"""Recover damaged PDFs with qpdf (through pikepdf) before giving up on them.

pypdf reads many damaged files by guessing; qpdf rebuilds them properly (cross-reference table,
object streams, lengths) and says what it fixed. A file that needed it is marked `repaired`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Iterator

import pikepdf


class _ThreadWarnings(logging.Handler):
    """Collects pypdf's warnings raised by one thread (splitting runs in several threads)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def pypdf_warnings() -> Iterator[list[str]]:
    """The warnings pypdf logs in this thread while the block runs (it logs damage it guessed
    around, such as a wrong startxref pointer)."""
    logger = logging.getLogger("pypdf")
    handler = _ThreadWarnings()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _lost_content(pdf: pikepdf.Pdf) -> int | None:
    """The 1-based number of the first page whose content stream did not survive, if any.

    qpdf can rebuild the page tree of a truncated file whose content streams are gone; those
    pages would come out blank, and a blank page must never stand in for a page that had text.
    """
    for number, page in enumerate(pdf.pages, start=1):
        contents = page.obj.get("/Contents")
        if contents is None:
            return number
        streams = list(contents) if isinstance(contents, pikepdf.Array) else [contents]
        try:
            for stream in streams:
                stream.read_bytes()
        except (pikepdf.PdfError, AttributeError, TypeError, ValueError):
            return number
    return None


def repair(data: bytes, passwords: list[str] | None = None) -> tuple[bytes, list[str]] | None:
    """Rewrite `data` with qpdf: (repaired bytes, what qpdf reported), or None if it cannot
    (including when a page's content would be lost).

    An encrypted file opened with one of `passwords` comes out decrypted.
    """
    for password in ["", *(passwords or [])]:
        try:
            with pikepdf.open(io.BytesIO(data), password=password) as pdf:
                warnings = [w.split(": ", 1)[-1] for w in pdf.get_warnings()]
                if warnings and _lost_content(pdf) is not None:
                    return None
                out = io.BytesIO()
                pdf.save(out)
                return out.getvalue(), warnings
        except pikepdf.PasswordError:
            continue
        except (pikepdf.PdfError, RuntimeError, ValueError, OSError):
            return None
    return None
