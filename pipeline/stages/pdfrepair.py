"""Decide whether qpdf's repair of a damaged PDF can be trusted.

qpdf (through pikepdf) opens damaged files by rebuilding what it can (cross-reference table,
object streams, lengths) and says what it fixed. It can also rebuild the page tree of a truncated
file whose content streams are gone: those pages would come out blank, and a blank page must
never stand in for a page that had text.
"""

from __future__ import annotations

import pikepdf


def lost_content(pdf: pikepdf.Pdf) -> int | None:
    """The 1-based number of the first page whose content stream did not survive, if any."""
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


def repair_notes(pdf: pikepdf.Pdf) -> list[str]:
    """What qpdf reported fixing while opening, without its stream-name prefix."""
    return [w.split(": ", 1)[-1] for w in pdf.get_warnings()]
