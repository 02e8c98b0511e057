"""Pages of a sent document: real text and sizes from a PDF (pypdf), or one page per image.

Everything here is synchronous; the server runs the pypdf parts in a worker thread.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pypdf import PageObject

DPI = 200
#: Size reported for every page in cheap mode: US letter at 200 dpi.
CHEAP_SIZE = (1700, 2200)
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![A-Za-z0-9])")


class DocumentError(Exception):
    """The document cannot be processed; the message is sent to the client (HTTP 400)."""


@dataclass(frozen=True)
class Page:
    index: int  # 0-based page number in the sent document
    markdown: str
    width: int | None  # pixels at DPI; None when unknown
    height: int | None


def is_pdf(data: bytes) -> bool:
    """PDF magic anywhere in the first KiB, as PDF readers tolerate leading junk."""
    return b"%PDF-" in data[:1024]


def select_pages(count: int, wanted: list[int] | None) -> list[int]:
    """The 0-based pages to answer: all of them, or the requested ones that exist."""
    if wanted is None:
        return list(range(count))
    missing = [p for p in wanted if p >= count]
    if missing:
        raise DocumentError(
            f"requested pages {missing} do not exist: the document has {count} page(s), "
            "numbered from 0"
        )
    return wanted


def pdf_pages(data: bytes, wanted: list[int] | None) -> list[Page]:
    """Text of each selected page (pypdf `extract_text`), size from the mediabox at DPI."""
    from pypdf import PdfReader  # imported lazily: cheap mode never needs it

    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception as exc:  # pypdf raises many types on garbage input
        raise DocumentError(f"the PDF could not be read: {exc}") from exc
    if encrypted:
        raise DocumentError("the PDF is encrypted: send a decrypted copy")
    try:
        count = len(reader.pages)
    except Exception as exc:
        raise DocumentError(f"the PDF page tree could not be read: {exc}") from exc
    if count == 0:
        raise DocumentError("the PDF has no pages")
    pages = []
    for index in select_pages(count, wanted):
        page = reader.pages[index]
        try:
            text = page.extract_text().strip()
        except Exception:
            text = ""
        if not text:
            text = f"(fake OCR: page {index + 1} has no text layer)"
        width, height = _page_size(page)
        pages.append(Page(index, text, width, height))
    return pages


def _page_size(page: PageObject) -> tuple[int | None, int | None]:
    try:
        box = page.mediabox
        width, height = float(box.width), float(box.height)
        if (page.rotation or 0) % 180 == 90:
            width, height = height, width
    except Exception:
        return None, None
    return round(abs(width) * DPI / 72), round(abs(height) * DPI / 72)


def cheap_pdf_page_count(data: bytes) -> int | None:
    """Count page objects by a byte search; None when that finds none (compressed objects)."""
    count = len(_PAGE_OBJECT.findall(data))
    return count or None


def pdf_page_count(data: bytes) -> int:
    """Page count with pypdf, for cheap mode's ambiguous cases."""
    from pypdf import PdfReader

    try:
        return len(PdfReader(io.BytesIO(data)).pages)
    except Exception as exc:
        raise DocumentError(f"the PDF could not be read: {exc}") from exc


def cheap_pages(count: int, wanted: list[int] | None) -> list[Page]:
    """Canned pages: no parsing at all, so a benchmark measures the client, not the server."""
    width, height = CHEAP_SIZE
    return [
        Page(i, f"# Page {i + 1}\n\nCanned text of page {i + 1} from the fake OCR server.",
             width, height)
        for i in select_pages(count, wanted)
    ]


def sniff_image(data: bytes) -> str | None:
    """MIME type of an image from its magic bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[4:12] in (b"ftypavif", b"ftypheic"):
        return "image/avif"
    return None


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG, JPEG, GIF or BMP header; None otherwise."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if data[:2] == b"BM":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_dimensions(data)
    except struct.error:
        return None
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG markers to the first start-of-frame segment."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def image_page(data: bytes, sha256: str) -> Page:
    """The one page of an image document: a fixed line naming the image's hash."""
    size = image_dimensions(data)
    width, height = size if size else (None, None)
    return Page(0, f"Fake OCR text of image {sha256[:12]}.", width, height)
