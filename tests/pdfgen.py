"""Real PDFs and images for tests, made with reportlab and Pillow."""

from __future__ import annotations

import io
from pathlib import Path

from reportlab.lib.pagesizes import letter
from reportlab.pdfgen import canvas


def page_text(doc: str, page: int) -> str:
    """The unique sentence printed on page `page` (0-based) of document `doc`."""
    return f"Document {doc} page {page + 1} marker {doc}-{page + 1}"


def pdf_bytes(texts: list[str], *, pagesize: tuple[float, float] = letter) -> bytes:
    """A born-digital PDF with one page per text, each text drawn as one line."""
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=pagesize)
    for text in texts:
        c.setFont("Helvetica", 14)
        c.drawString(72, pagesize[1] - 100, text)
        c.showPage()
    c.save()
    return buf.getvalue()


def write_pdf(path: Path, doc: str, pages: int) -> list[str]:
    """Write a PDF whose pages carry `page_text(doc, i)`; return those texts."""
    texts = [page_text(doc, i) for i in range(pages)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pdf_bytes(texts))
    return texts


def png_bytes(size: tuple[int, int] = (64, 48), color: str = "white") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(size: tuple[int, int] = (64, 48), color: str = "white") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()
