"""A generated layout test set: ruled and borderless tables, tables of contents, receipts, magazine pages.

Each page is typeset with reportlab (so its ground truth is exact: table cells, reading order,
right-aligned numbers), rendered with pypdfium2 and degraded like a scan (noise, a slight tilt,
blur). Everything follows from a seed: the same seed gives the same page. The development set
(seeds from 0, Helvetica and Times) was looked at while building; the held-out set (seeds from
1000, DejaVu Sans and Serif, or Courier where DejaVu is missing) was not.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter
from reportlab.lib.pagesizes import letter
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

from tests.local_fixtures import PARAGRAPHS, add_noise, render

KINDS = ("ruled", "borderless", "toc", "receipt", "magazine")
DEV_FONTS = [("Helvetica", "Helvetica-Bold"), ("Times-Roman", "Times-Bold")]
_DEJAVU = Path("/usr/share/fonts/truetype/dejavu")

WORDS = [
    "river",
    "stone",
    "harbor",
    "maple",
    "copper",
    "signal",
    "garden",
    "winter",
    "orbit",
    "falcon",
    "marble",
    "lantern",
    "meadow",
    "silver",
    "canyon",
    "harvest",
    "beacon",
    "willow",
    "ember",
    "thunder",
    "cedar",
    "quartz",
    "prairie",
    "summit",
    "glacier",
]
SECTIONS = [
    "Introduction",
    "Background",
    "Methods",
    "Field Work",
    "Results",
    "Discussion",
    "Costs and Funding",
    "Outlook",
    "Appendix",
    "Index",
    "Acknowledgements",
    "Glossary",
    "Survey Data",
    "Regional Notes",
]
ITEMS = [
    "Coffee beans",
    "Whole milk",
    "Rye bread",
    "Olive oil",
    "Green tea",
    "Apples 1kg",
    "Paper towels",
    "Dish soap",
    "Cheddar",
    "Orange juice",
    "Pasta",
    "Tomatoes",
    "Honey jar",
    "Rice 2kg",
]


@dataclass
class LayoutPage:
    kind: str
    seed: int
    image: Image.Image
    dpi: int
    text: str  # reference text in reading order (markdown marks aside)
    cells: list[list[str]] | None = None  # tables: the grid, header row first
    numbers: list[str] = field(default_factory=list)  # right-aligned numbers that must be kept


def held_out_fonts() -> list[tuple[str, str]]:
    fonts = []
    for name in ("DejaVuSans", "DejaVuSerif"):
        regular, bold = name, name + "-Bold"
        try:
            pdfmetrics.registerFont(TTFont(name, str(_DEJAVU / f"{regular}.ttf")))
            pdfmetrics.registerFont(TTFont(name + "-Bold", str(_DEJAVU / f"{bold}.ttf")))
            fonts.append((name, name + "-Bold"))
        except Exception:  # noqa: BLE001 - the font files are optional
            continue
    return fonts or [("Courier", "Courier-Bold")]


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS).capitalize()


def _cell(rng: random.Random, col: int) -> str:
    if col == 0:
        return _word(rng)
    if rng.random() < 0.5:
        return f"{rng.randint(1, 9999):,}"
    return f"{rng.randint(1, 99)}.{rng.randint(0, 9)}"


def _table(
    c: canvas.Canvas, rng: random.Random, fonts: tuple[str, str], ruled: bool, ncols: int | None = None
) -> list[list[str]]:
    ncols = ncols or rng.randint(3, 8)
    nrows = rng.randint(4, 8)
    header = [_word(rng) for _ in range(ncols)]
    rows = [header] + [[_cell(rng, j) for j in range(ncols)] for _ in range(nrows - 1)]
    size = 10 if ncols <= 6 else 9
    left, right = 60, letter[0] - 60
    col_w = (right - left) / ncols
    row_h = size * 2.2
    top = letter[1] - 120
    c.setFont(fonts[1], 14)
    c.drawString(left, top + 30, f"Table {rng.randint(1, 9)}: {_word(rng)} figures")
    for i, row in enumerate(rows):
        y = top - i * row_h
        c.setFont(fonts[1] if i == 0 else fonts[0], size)
        for j, text in enumerate(row):
            x = left + j * col_w
            if ruled or j == 0:
                c.drawString(x + 6, y - row_h + size * 0.8, text)
            else:
                c.drawRightString(x + col_w - 6, y - row_h + size * 0.8, text)
    if ruled:
        c.setLineWidth(rng.choice([0.6, 0.8, 1.2]))
        bottom = top - len(rows) * row_h
        for i in range(len(rows) + 1):
            c.line(left, top - i * row_h, right, top - i * row_h)
        for j in range(ncols + 1):
            c.line(left + j * col_w, top, left + j * col_w, bottom)
    return rows


def _toc(c: canvas.Canvas, rng: random.Random, fonts: tuple[str, str]) -> tuple[str, list[str]]:
    c.setFont(fonts[1], 18)
    top = letter[1] - 100
    c.drawString(72, top, "Contents")
    names = rng.sample(SECTIONS, rng.randint(6, 10))
    page = rng.randint(1, 5)
    lines, numbers = ["Contents"], []
    c.setFont(fonts[0], 11)
    for i, name in enumerate(names):
        y = top - 40 - i * 24
        label = f"{i + 1} {name}"
        c.drawString(72, y, label)
        c.drawRightString(letter[0] - 72, y, str(page))
        start = 72 + c.stringWidth(label, fonts[0], 11) + 8
        end = letter[0] - 72 - c.stringWidth(str(page), fonts[0], 11) - 8
        dot = c.stringWidth(". ", fonts[0], 11)
        c.drawString(start, y, ". " * int((end - start) / dot))
        lines.append(f"{label} {page}")
        numbers.append(str(page))
        page += rng.randint(2, 14)
    return "\n".join(lines), numbers


def _receipt(c: canvas.Canvas, rng: random.Random, fonts: tuple[str, str]) -> tuple[str, list[str]]:
    width = letter[0]
    top = letter[1] - 100
    shop = f"{_word(rng).upper()} MARKET"
    c.setFont(fonts[1], 14)
    c.drawCentredString(width / 2, top, shop)
    lines, numbers = [shop], []
    total = 0
    c.setFont(fonts[0], 12)
    items = rng.sample(ITEMS, rng.randint(4, 8))
    y = top - 50
    for name in items:
        cents = rng.randint(50, 4000)
        total += cents
        price = f"{cents // 100}.{cents % 100:02d}"
        c.drawString(180, y, name)
        c.drawRightString(width - 180, y, price)
        lines.append(f"{name} {price}")
        numbers.append(price)
        y -= 20
    y -= 20
    c.setFont(fonts[1], 12)
    price = f"{total // 100}.{total % 100:02d}"
    c.drawString(180, y, "TOTAL")
    c.drawRightString(width - 180, y, price)
    lines.append(f"TOTAL {price}")
    numbers.append(price)
    return "\n".join(lines), numbers


def _magazine(
    c: canvas.Canvas, rng: random.Random, fonts: tuple[str, str], pdf_img: list, picture: str | None = None
) -> str:
    """Columns with headline, drop cap, header, footer, and a picture in the last column: a third of
    the way down or at its top (then the text runs on below the caption, which must not split it)."""
    width, height = letter
    ncols = rng.choice([2, 3])
    margin, gutter = 54, 18
    col_w = (width - 2 * margin - (ncols - 1) * gutter) / ncols
    paper = f"The {_word(rng)} Courier"
    header = f"{paper} {rng.randint(1, 12)}/{rng.randint(2019, 2025)}"
    c.setFont(fonts[0], 8)
    c.drawString(margin, height - 36, header)
    headline = f"{_word(rng)} {rng.choice(['Valley', 'Harbor', 'Council'])} Plans {_word(rng)} Project"
    c.setFont(fonts[1], 24)
    c.drawString(margin, height - 90, headline)
    footer = f"Page {rng.randint(2, 40)}"
    c.setFont(fonts[0], 8)
    c.drawCentredString(width / 2, 30, footer)
    paras = rng.sample(PARAGRAPHS, len(PARAGRAPHS))
    size, lead = 10, 13
    # Columns as long as the text needs, so every column holds text, the picture in the last one.
    img_h = 100
    n_lines = sum(len(simpleSplit(p, fonts[0], size, col_w)) + 1 for p in paras) + 2
    col_top = height - 130
    col_h = (n_lines * lead + img_h + 40) / ncols + 2 * lead
    cap = f"Figure {rng.randint(1, 9)}: the {rng.choice(WORDS)} near the old {rng.choice(WORDS)}."
    # Drawn from its own generator, so the pages' other draws stay what they were.
    picture = picture or random.Random(cap).choice(["third", "top"])
    img_top = col_top if picture == "top" else col_top - col_h / 3
    pic_x = margin + (ncols - 1) * (col_w + gutter)
    pdf_img.append((pic_x, img_top - img_h, col_w, img_h))
    c.setFont(fonts[0], 8)
    c.drawString(pic_x, img_top - img_h - 12, cap)
    # y range the text flows around (a line of white below a caption at the top of the column)
    blocked = (img_top + 8, img_top - img_h - 22 - (lead if picture == "top" else 0))
    col, y = 0, col_top
    bottom = col_top - col_h
    drop = paras[0][0]
    text_paras = [paras[0][1:]] + paras[1:]
    for pi, para in enumerate(text_paras):
        first = pi == 0
        lines = simpleSplit(para, fonts[0], size, col_w - (30 if first else 0))
        li = 0
        while li < len(lines):
            if y < bottom and col < ncols - 1:
                col += 1
                y = col_top
            if col == ncols - 1 and blocked[1] < y < blocked[0]:
                y = blocked[1]
                continue
            x = margin + col * (col_w + gutter)
            indent = 30 if first and li < 2 else 0
            if first and li == 2:
                # Lines below the drop cap take the full column: re-wrap the rest.
                rest = " ".join(lines[2:])
                lines = lines[:2] + simpleSplit(rest, fonts[0], size, col_w)
            c.setFont(fonts[0], size)
            c.drawString(x + indent, y, lines[li])
            if first and li == 0:
                c.setFont(fonts[1], 30)
                c.drawString(x, y - lead + 3, drop)
            y -= lead
            li += 1
        y -= lead * 0.6
    body = "\n\n".join(paras)
    return "\n\n".join([header, headline, body, cap, footer])


def _picture(img: Image.Image, box: tuple[float, float, float, float], dpi: int, seed: int) -> None:
    """A photo-like area: soft shapes over a gradient, painted onto the rendered page."""
    x, y, w, h = box
    s = dpi / 72
    left, top = int(x * s), int((letter[1] - y - h) * s)
    pw, ph = int(w * s), int(h * s)
    pic = Image.linear_gradient("L").resize((pw, ph)).point(lambda v: 90 + v // 3)
    draw = ImageDraw.Draw(pic)
    rng = random.Random(seed)
    for _ in range(6):
        cx, cy, r = rng.randint(0, pw), rng.randint(0, ph), rng.randint(ph // 8, ph // 3)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rng.randint(40, 200))
    img.paste(pic.filter(ImageFilter.GaussianBlur(3)).convert(img.mode), (left, top))


def make_page(
    kind: str,
    seed: int,
    fonts: tuple[str, str],
    dpi: int = 200,
    columns: int | None = None,
    picture: str | None = None,
) -> LayoutPage:
    rng = random.Random(f"{kind}-{seed}")
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter)
    cells, numbers, pictures = None, [], []
    if kind in ("ruled", "borderless"):
        cells = _table(c, rng, fonts, ruled=kind == "ruled", ncols=columns)
        text = "\n".join(" ".join(r) for r in cells)
    elif kind == "toc":
        text, numbers = _toc(c, rng, fonts)
    elif kind == "receipt":
        text, numbers = _receipt(c, rng, fonts)
    else:
        text = _magazine(c, rng, fonts, pictures, picture)
    c.showPage()
    c.save()
    img = render(buf.getvalue(), dpi)
    for box in pictures:
        _picture(img, box, dpi, seed)
    img = add_noise(img, sigma=rng.uniform(8, 18), seed=seed)
    img = img.rotate(rng.uniform(-0.7, 0.7), resample=Image.Resampling.BICUBIC, fillcolor=255)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7)))
    return LayoutPage(kind, seed, img, dpi, text, cells, numbers)


def page_set(
    held_out: bool, per_kind: int = 4, kinds: tuple[str, ...] = KINDS, base: int | None = None
) -> list[LayoutPage]:
    """`per_kind` pages of each kind: development seeds from 0, held-out seeds from 1000 (or
    from `base`: a fresh held-out set nobody has looked at)."""
    fonts = held_out_fonts() if held_out else DEV_FONTS
    base = base if base is not None else 1000 if held_out else 0
    return [make_page(kind, base + i, fonts[i % len(fonts)]) for kind in kinds for i in range(per_kind)]
