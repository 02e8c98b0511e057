"""Regenerate the bundled sample inputs (deterministic: same bytes each run).

    .venv/bin/python samples/make_samples.py          # writes into samples/

text.pdf            born-digital letter, a title and four paragraphs (text layer)
multipage.pdf       born-digital, three pages
scanned.pdf         image-only PDF: a page rendered at 200 dpi with sensor noise and a 0.8° tilt
two-column.png      a two-column page scanned at 150 dpi
receipt.jpg         a phone photo of a till receipt: tinted paper, tilt, noise, JPEG
scanned-2pages.tif  a two-page fax-style TIFF (1-bit, Group 4)
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image, ImageFilter
from reportlab.pdfgen import canvas

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.local_fixtures import (  # noqa: E402
    PARAGRAPHS,
    add_noise,
    image_pdf,
    multi_page_pdf,
    prose_page,
    render,
    tilt,
)

RECEIPT = [
    ("GREEN LEAF GROCERY", None),
    ("12 Market Street", None),
    ("", None),
    ("Coffee beans", "18.50"),
    ("Whole milk", "1.20"),
    ("Sugar cubes", "2.75"),
    ("Paper cups x50", "6.00"),
    ("Rye bread", "3.40"),
    ("", None),
    ("TOTAL", "31.85"),
    ("CARD", "31.85"),
    ("", None),
    ("Thank you for shopping", None),
]


def receipt_pdf() -> bytes:
    width, height = 3.2 * 72, 5.2 * 72
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(width, height))
    y = height - 30
    for left, right in RECEIPT:
        c.setFont("Courier-Bold" if right is None and left.isupper() else "Courier", 10)
        if right is None:
            c.drawCentredString(width / 2, y, left)
        else:
            c.drawString(16, y, left)
            c.drawRightString(width - 16, y, right)
        y -= 15
    c.showPage()
    c.save()
    return buf.getvalue()


def photo(pdf: bytes) -> Image.Image:
    """Paper on a table, shot at an angle: tinted, tilted, noisy, a little soft."""
    paper = render(pdf, 220)
    paper = add_noise(paper, sigma=14, seed=3)
    tinted = Image.merge(
        "RGB",
        [paper.point(lambda v: v * 0.97), paper.point(lambda v: v * 0.94), paper.point(lambda v: v * 0.86)],
    )
    table = Image.new("RGB", (tinted.width + 160, tinted.height + 160), (92, 74, 58))
    table.paste(tinted, (80, 80))
    return table.rotate(2.0, resample=Image.BICUBIC, fillcolor=(92, 74, 58)).filter(
        ImageFilter.GaussianBlur(0.5)
    )


def main() -> None:
    out = HERE
    title_paras = ("Quarterly Report", PARAGRAPHS[:4])
    page = prose_page(*title_paras)
    (out / "text.pdf").write_bytes(page.pdf)

    multi, _ = multi_page_pdf(
        [
            ("Quarterly Report", PARAGRAPHS[:3]),
            ("Town Council Notes", PARAGRAPHS[3:6]),
            ("Annual Review", PARAGRAPHS[6:8]),
        ]
    )
    (out / "multipage.pdf").write_bytes(multi)

    scan = tilt(add_noise(render(page.pdf, 200), sigma=24, seed=7), 0.8)
    (out / "scanned.pdf").write_bytes(image_pdf([scan], 200, quality=40))

    two = prose_page("Town Council Notes", PARAGRAPHS[:6], font_size=10, columns=2)
    render(two.pdf, 150).save(out / "two-column.png", optimize=True, dpi=(150, 150))

    photo(receipt_pdf()).save(out / "receipt.jpg", quality=70, dpi=(220, 220))

    pages = [prose_page(t, PARAGRAPHS[i : i + 2]) for i, t in [(2, "Weekly Bulletin"), (4, "Annual Review")]]
    frames = [render(p.pdf, 200).point(lambda v: 255 if v > 160 else 0).convert("1") for p in pages]
    frames[0].save(
        out / "scanned-2pages.tif",
        save_all=True,
        append_images=frames[1:],
        compression="group4",
        dpi=(200, 200),
    )

    total = 0
    for f in sorted(out.iterdir()):
        if f.suffix != ".py":
            total += f.stat().st_size
            print(f"{f.name:22s} {f.stat().st_size / 1024:7.1f} KiB")
    print(f"{'total':22s} {total / 1024:7.1f} KiB")


if __name__ == "__main__":
    main()
