"""Decide whether qpdf's repair of a damaged PDF can be trusted.

qpdf (through pikepdf) opens damaged files by rebuilding what it can (cross-reference table,
object streams, lengths) and says what it fixed. It can also rebuild the page tree of a truncated
file whose content streams are gone: those pages would come out blank, and a blank page must
never stand in for a page that had text. But a page that never had a content stream is blank in
every reader: refusing it would refuse a valid document for a harmless note (say, an encrypted
file without /ID in its trailer). So a repair is refused only when it loses content the original
had: a content stream that cannot be read, or one the original page names and the repair lost.
"""

from __future__ import annotations

import re

import pikepdf

from pipeline.reasons import stable_text

_NEXT_OBJECT = re.compile(rb"(?<![0-9])[0-9]+\s+[0-9]+\s+obj\b|\bendobj\b")


def lost_content(pdf: pikepdf.Pdf, data: bytes, notes: list[str]) -> int | None:
    """The 1-based number of the first page whose content did not survive the repair, if any.

    `data` is the original file and `notes` what qpdf reported fixing.
    """
    rebuilt = any("reconstruct" in note or "damaged" in note for note in notes)
    for number, page in enumerate(pdf.pages, start=1):
        contents = page.obj.get("/Contents")
        if contents is None:
            # qpdf drops a key whose object is gone: only the original bytes still show it.
            named = _names_contents(data, page.obj.objgen)
            if named or (named is None and rebuilt):
                return number
            continue  # a page without content: blank in the original too
        streams = list(contents) if isinstance(contents, pikepdf.Array) else [contents]
        try:
            for stream in streams:
                stream.read_bytes()
        except (pikepdf.PdfError, AttributeError, TypeError, ValueError):
            return number
    return None


def _names_contents(data: bytes, objgen: tuple[int, int]) -> bool | None:
    """Whether the original page object `objgen` has a /Contents key; None when its text is not
    in the file (an object stream): the caller then assumes the worst if the file was rebuilt."""
    number, generation = objgen
    if number <= 0:
        return None
    found = False
    for start in re.finditer(rb"(?<![0-9])%d\s+%d\s+obj\b" % (number, generation), data):
        found = True
        end = _NEXT_OBJECT.search(data, start.end())
        if b"/Contents" in data[start.end() : end.start() if end else len(data)]:
            return True
    return False if found else None


def repair_notes(pdf: pikepdf.Pdf) -> list[str]:
    """What qpdf reported fixing while opening, without the in-memory stream's name."""
    return [stable_text(w) for w in pdf.get_warnings()]
