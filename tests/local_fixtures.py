"""Generated pages with known text for the local OCR engine's tests and benchmark.

Pages are typeset with reportlab (so the reference text is exact), rasterised with pypdfium2 and
degraded with Pillow (noise, tilt, JPEG, low resolution) the way a scanner or a phone would.
Everything is deterministic: the same call gives the same bytes.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass

from PIL import Image, ImageFilter
from reportlab.lib.pagesizes import letter
from reportlab.lib.utils import simpleSplit
from reportlab.pdfgen import canvas

PARAGRAPHS = [
    "The committee met on Tuesday morning to review the annual budget. Members agreed that the "
    "library would receive additional funds for new books, while the museum would delay its "
    "renovation until the spring of next year.",
    "Heavy rain fell across the northern valley during the night. Farmers reported that the river "
    "rose nearly two meters above its usual level, and several roads near the old bridge were "
    "closed to traffic until noon.",
    "Our shipping department processed 4,250 orders in March, an increase of 12 percent over the "
    "same month last year. Most parcels were delivered within three working days.",
    "Please remember to return the signed contract before the end of the month. If you have any "
    "questions about the terms, contact the office between nine and five on weekdays.",
    "The new train line connects the harbor with the central station in about fifteen minutes. "
    "Tickets can be bought at the machines on every platform or with the mobile application.",
    "A small bakery on Market Street has become famous for its bread. The owner starts work at "
    "four in the morning, and customers often wait in a long line before the doors open.",
    "Students who wish to join the science fair must submit a short description of their project "
    "by Friday. Each team may have up to three members and one adult advisor.",
    "The hospital opened a second wing last autumn, adding forty beds and a modern laboratory. "
    "Visiting hours remain unchanged: from two until eight in the evening.",
]

TITLES = ["Quarterly Report", "Town Council Notes", "Annual Review", "Weekly Bulletin"]


@dataclass
class Page:
    """A typeset page: its PDF bytes and the reference text in reading order."""

    pdf: bytes
    text: str
    title: str
    paragraphs: list[str]


def normalize(text: str) -> str:
    """Text for CER: markdown marks dropped, whitespace collapsed."""
    text = re.sub(r"^#+\s*", "", text, flags=re.M)
    text = re.sub(r"^[\s|:-]*-{3,}[\s|:-]*$", " ", text, flags=re.M)  # table header rules
    text = text.replace("\\|", "|").replace("| ", " ").replace(" |", " ")
    return " ".join(text.split())


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate: Levenshtein distance over the reference length (normalized text)."""
    from rapidfuzz.distance import Levenshtein

    ref, hyp = normalize(reference), normalize(hypothesis)
    return Levenshtein.distance(ref, hyp) / max(1, len(ref))


def _wrap(text: str, font: str, size: float, width: float) -> list[str]:
    return simpleSplit(text, font, size, width)


def prose_page(
    title: str,
    paragraphs: list[str],
    *,
    font_size: float = 11,
    columns: int = 1,
    pagesize: tuple[float, float] = letter,
    margin: float = 54,
    title_size: float | None = None,
    c: canvas.Canvas | None = None,
) -> Page:
    """One page: a title in large type, then paragraphs in one or two columns."""
    buf = io.BytesIO()
    own = c is None
    cv = canvas.Canvas(buf, pagesize=pagesize) if c is None else c
    width, height = pagesize
    tsize = title_size or font_size * 2
    y = height - margin - tsize
    cv.setFont("Helvetica-Bold", tsize)
    cv.drawString(margin, y, title)
    y -= tsize * 1.2
    gutter = 24.0
    col_w = (width - 2 * margin - gutter * (columns - 1)) / columns
    leading = font_size * 1.25
    top = y
    col = 0
    cv.setFont("Times-Roman", font_size)
    per_col = -(-len(paragraphs) // columns)  # the first half in column one, and so on
    for n, para in enumerate(paragraphs):
        lines = _wrap(para, "Times-Roman", font_size, col_w)
        if n and n % per_col == 0 and col + 1 < columns:
            col += 1
            y = top
        x = margin + col * (col_w + gutter)
        for line in lines:
            y -= leading
            cv.drawString(x, y, line)
        y -= leading * 0.8
    cv.showPage()
    if own:
        cv.save()
    return Page(buf.getvalue() if own else b"", "\n\n".join([title, *paragraphs]), title, paragraphs)


def multi_page_pdf(pages: list[tuple[str, list[str]]], **kw: object) -> tuple[bytes, list[str]]:
    """A born-digital PDF with one prose page per (title, paragraphs); returns bytes and texts."""
    buf = io.BytesIO()
    pagesize = kw.get("pagesize", letter)
    cv = canvas.Canvas(buf, pagesize=pagesize)  # type: ignore[arg-type]
    texts = []
    for title, paras in pages:
        p = prose_page(title, paras, c=cv, **kw)  # type: ignore[arg-type]
        texts.append(p.text)
    cv.save()
    return buf.getvalue(), texts


def render(pdf: bytes, dpi: int, page: int = 0) -> Image.Image:
    """Rasterise one page to a greyscale image, as a scanner would."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(pdf)
    try:
        bitmap = doc[page].render(scale=dpi / 72, grayscale=True)
        img = bitmap.to_pil().convert("L")
    finally:
        doc.close()
    return img


def add_noise(img: Image.Image, sigma: float = 30, seed: int = 1) -> Image.Image:
    """Gaussian sensor noise plus a slight blur, like a cheap flatbed.

    The noise comes from a generator seeded here: Pillow's `effect_noise` draws from the C
    library's `rand()`, whose state depends on whatever ran before in the process, so a page made
    with it differed between a lone test and the whole suite."""
    import numpy as np

    rnd = random.Random(seed)
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, sigma, grey.shape)
    out = Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(radius=0.6 + rnd.random() * 0.2))


def tilt(img: Image.Image, degrees: float) -> Image.Image:
    """Rotate by a small angle with a white background (a page fed crooked)."""
    return img.rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor=255)


def jpeg(img: Image.Image, quality: int = 20) -> Image.Image:
    buf = io.BytesIO()
    img.convert("L").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("L")


def to_bytes(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def image_pdf(images: list[Image.Image], dpi: int, **save: object) -> bytes:
    """An image-only PDF (a 'scanned' document): one full-page image per page, no text layer."""
    buf = io.BytesIO()
    # Copies: Pillow leaves save parameters (append_images) on the images it saved, and a later
    # save of one of them would append the old list again.
    first, *rest = [im.copy() for im in images]
    first.save(buf, format="PDF", save_all=True, append_images=rest, resolution=float(dpi), **save)
    return buf.getvalue()


def variant(pdf: bytes, name: str) -> tuple[Image.Image, int]:
    """The benchmark's degradations of a typeset page; returns the image and its dpi."""
    if name == "clean150":
        return render(pdf, 150), 150
    if name == "clean300":
        return render(pdf, 300), 300
    if name == "noise300":
        return add_noise(render(pdf, 300)), 300
    if name == "rot300":
        return tilt(render(pdf, 300), 1.5), 300
    if name == "jpeg300":
        return jpeg(render(pdf, 300), 20), 300
    if name == "combo150":
        return jpeg(add_noise(tilt(render(pdf, 150), -1.2), sigma=20), 30), 150
    raise ValueError(name)


VARIANTS = ["clean150", "clean300", "noise300", "rot300", "jpeg300", "combo150"]


TABLE = [
    ["Item", "Quantity", "Price"],
    ["Coffee beans", "2", "18.50"],
    ["Whole milk", "1", "1.20"],
    ["Sugar cubes", "3", "2.75"],
    ["Paper cups", "50", "6.00"],
]


def table_page(
    rows: list[list[str]] = TABLE,
    *,
    grid: bool = False,
    font_size: float = 11,
    pagesize: tuple[float, float] = letter,
) -> Page:
    """A short heading, a sentence and a simple table (text aligned in columns)."""
    buf = io.BytesIO()
    cv = canvas.Canvas(buf, pagesize=pagesize)
    width, height = pagesize
    x0, y = min(72.0, width * 0.12), height - 90
    cv.setFont("Helvetica-Bold", font_size * 1.8)
    cv.drawString(x0, y, "Order Summary")
    y -= font_size * 2.5
    intro = "The following items were delivered to the kitchen on Monday."
    cv.setFont("Times-Roman", font_size)
    cv.drawString(x0, y, intro)
    y -= font_size * 3
    span = width - 2 * x0
    col_x = [x0, x0 + 0.45 * span, x0 + 0.75 * span]
    row_h = font_size * 1.9
    for r, row in enumerate(rows):
        cv.setFont("Helvetica-Bold" if r == 0 else "Helvetica", font_size)
        for x, cell in zip(col_x, row, strict=True):
            cv.drawString(x + 4, y, cell)
        if grid:
            cv.line(x0, y - 6, x0 + span, y - 6)
        y -= row_h
    cv.showPage()
    cv.save()
    text = "\n".join(["Order Summary", intro, *(" ".join(r) for r in rows)])
    return Page(buf.getvalue(), text, "Order Summary", [intro])


def tiff_bytes(
    frames: list[tuple[Image.Image, tuple[int, int] | None]], *, big: bool = False, byteorder: str = "<"
) -> bytes:
    """A TIFF written by hand: one uncompressed 8-bit greyscale strip per frame, each frame with its
    own resolution (dots per inch) or none. `big` writes a BigTIFF (magic 43, 64-bit offsets);
    `byteorder` ">" a big-endian ("MM") file. Pillow writes neither big-endian BigTIFFs nor a
    different resolution per frame."""
    import struct

    offset, count = ("Q", "Q") if big else ("L", "H")
    entry, field_size = ("HHQ", 8) if big else ("HHL", 4)
    out = bytearray(b"II" if byteorder == "<" else b"MM")
    out += struct.pack(byteorder + "HHHQ", 43, 8, 0, 0) if big else struct.pack(byteorder + "HL", 42, 0)
    link = 8 if big else 4  # where the offset of the next IFD goes
    for image, dpi in frames:
        grey = image.convert("L")
        width, height = grey.size
        pixels = grey.tobytes()
        strip = len(out)
        out += pixels + b"\0" * (len(pixels) % 2)
        tags: list[tuple[int, int, int]] = [
            (256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 16 if big else 4, strip), (277, 3, 1), (278, 4, height), (279, 4, len(pixels)),
        ]
        rationals: dict[int, bytes] = {}
        if dpi is not None:
            tags += [(282, 5, 0), (283, 5, 0), (296, 3, 2)]
            for tag, value in ((282, dpi[0]), (283, dpi[1])):
                rationals[tag] = struct.pack(byteorder + "LL", value, 1)
                if not big:  # 8 bytes do not fit a classic entry: stored aside, pointed at
                    rationals[tag], position = struct.pack(byteorder + "L", len(out)), len(out)
                    out += struct.pack(byteorder + "LL", value, 1)
                    assert position % 2 == 0
        struct.pack_into(byteorder + offset, out, link, len(out))
        out += struct.pack(byteorder + count, len(tags))
        for tag, kind, value in sorted(tags):
            field = rationals[tag] if kind == 5 else struct.pack(
                byteorder + {3: "H", 4: "L", 16: "Q"}[kind], value
            )
            out += struct.pack(byteorder + entry, tag, kind, 1) + field.ljust(field_size, b"\0")
        link = len(out)
        out += struct.pack(byteorder + offset, 0)
    return bytes(out)
