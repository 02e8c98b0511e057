"""PDF opening and page rendering with pypdfium2, with the pixel limit checked before rendering."""

from __future__ import annotations

import math

import pypdfium2 as pdfium
from PIL import Image

from pipeline.backends.local.images import too_large
from pipeline.errors import EncryptedError, InputError
from pipeline.reasons import exception_text

_FPDF_ERR_PASSWORD = 4


def open_pdf(data: bytes) -> pdfium.PdfDocument:
    """Open a PDF from bytes; map PDFium's failures onto the error taxonomy."""
    if not data:
        raise InputError("the PDF is empty", hint="check the source file")
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == _FPDF_ERR_PASSWORD:
            raise EncryptedError("the PDF is password-protected") from exc
        raise InputError(
            f"cannot open the PDF: {exception_text(exc)}",
            hint="the file is corrupt or truncated: try `qpdf --check` on it, or re-export it",
        ) from exc


def page_pixels(page: pdfium.PdfPage, dpi: int) -> tuple[int, int]:
    """Width and height in pixels of the page rendered at `dpi` (honouring /Rotate)."""
    width_pt, height_pt = page.get_size()
    if page.get_rotation() % 180:
        width_pt, height_pt = height_pt, width_pt
    return math.ceil(width_pt * dpi / 72), math.ceil(height_pt * dpi / 72)


def render_page(page: pdfium.PdfPage, dpi: int, max_pixels: int) -> Image.Image:
    """Render one page to 8-bit greyscale; refuse before allocating if it is too large."""
    width, height = page_pixels(page, dpi)
    if width <= 0 or height <= 0:
        raise InputError(f"the page has an invalid size {width}x{height} px", hint="re-export it")
    if width * height > max_pixels:
        raise too_large(f"the page at {dpi} dpi", width, height, max_pixels)
    try:
        bitmap = page.render(scale=dpi / 72, grayscale=True, may_draw_forms=True)
    except pdfium.PdfiumError as exc:
        raise InputError(f"cannot render the page: {exception_text(exc)}", hint="re-export the PDF") from exc
    try:
        return bitmap.to_pil().convert("L")
    finally:
        bitmap.close()
