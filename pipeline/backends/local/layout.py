"""Markdown from page structure: paragraphs, headings by type size, simple tables by alignment.

Both the OCR engine and the PDF text layer describe a page as blocks of paragraphs of lines with
boxes (pixels, origin top-left); this module turns that into markdown. Reading order is the
order of the blocks as given: Tesseract's own layout analysis orders columns correctly (checked
by tests on two-column pages), and a born-digital text layer is in content-stream order.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

Box = tuple[int, int, int, int]  # x0, y0, x1, y1


@dataclass
class Word:
    text: str
    box: Box
    conf: float | None = None


@dataclass
class Line:
    words: list[Word]
    box: Box
    size: float  # type size in pixels: Tesseract's row height, or the text-run height
    cells: list[list[Word]] | None = None  # set when the row was rebuilt from column blocks

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


@dataclass
class Paragraph:
    lines: list[Line] = field(default_factory=list)


@dataclass
class Block:
    paragraphs: list[Paragraph] = field(default_factory=list)
    # body, headline, caption, header, footer (set by regions.arrange), or table (a ruled grid)
    kind: str = "body"
    table: list[list[str]] | None = None  # cell texts, first row the header, when kind == "table"
    grid_box: Box | None = None
    band: int | None = None  # the page band it was read in (columns.find), top to bottom
    column: int = 0  # the column within the band, left to right

    @property
    def box(self) -> Box | None:
        """Union of the block's line boxes (or its grid's box)."""
        if self.grid_box is not None:
            return self.grid_box
        boxes = [line.box for p in self.paragraphs for line in p.lines if line.words]
        if not boxes:
            return None
        return (
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        )


# A gap between two words wider than this many line heights separates table cells; ordinary
# word spacing is about a quarter of the line height, stretched justification under one.
CELL_GAP = 1.2
H1_RATIO = 1.6  # a paragraph whose type is this much larger than the body text is a '#'
H2_RATIO = 1.25  # ... and this much larger a '##'
MAX_HEADING_WORDS = 20


def body_size(blocks: list[Block]) -> float:
    """Median type size weighted by characters: the size of the running text."""
    sizes: list[float] = []
    for block in blocks:
        for para in block.paragraphs:
            for line in para.lines:
                sizes.extend([line.size] * max(1, len(line.text)))
    return statistics.median(sizes) if sizes else 0.0


def split_cells(line: Line) -> list[list[Word]]:
    """Split a line into runs of words separated by gaps wider than CELL_GAP line heights."""
    if line.cells is not None:
        return line.cells
    height = max(1, line.box[3] - line.box[1])
    cells: list[list[Word]] = [[line.words[0]]] if line.words else []
    for prev, word in zip(line.words, line.words[1:], strict=False):
        if word.box[0] - prev.box[2] > CELL_GAP * height:
            cells.append([word])
        else:
            cells[-1].append(word)
    return cells


def _columns(rows: list[list[list[Word]]]) -> list[tuple[int, int]]:
    """Column intervals: the union of overlapping cell spans across all rows."""
    spans = sorted((c[0].box[0], c[-1].box[2]) for row in rows for c in row)
    cols: list[list[int]] = []
    for x0, x1 in spans:
        if cols and x0 <= cols[-1][1]:
            cols[-1][1] = max(cols[-1][1], x1)
        else:
            cols.append([x0, x1])
    return [(a, b) for a, b in cols]


def table_markdown(lines: list[Line]) -> str | None:
    """A markdown table from lines whose cells line up in columns, or None if they do not."""
    rows = [split_cells(line) for line in lines]
    cols = _columns(rows)
    if len(cols) < 2 or len(cols) > 12:
        return None
    grid: list[list[str]] = []
    for row in rows:
        cells = [""] * len(cols)
        for cell in row:
            x0, x1 = cell[0].box[0], cell[-1].box[2]
            idx = next(i for i, (a, b) in enumerate(cols) if x0 <= b and x1 >= a)
            text = " ".join(w.text for w in cell).replace("|", "\\|")
            cells[idx] = f"{cells[idx]} {text}".strip()
        grid.append(cells)
    # Mostly-empty grids are not tables (e.g. a signature line far from its label).
    filled = sum(1 for row in grid for c in row if c)
    if filled < 0.6 * len(grid) * len(cols):
        return None
    out = ["| " + " | ".join(grid[0]) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(row) + " |" for row in grid[1:]]
    return "\n".join(out)


def _join_lines(lines: list[Line]) -> str:
    """Join a paragraph's lines; undo end-of-line hyphenation before a lower-case word."""
    text = ""
    for line in lines:
        part = line.text.strip()
        if not part:
            continue
        if text.endswith("-") and part[:1].islower() and len(text) > 1 and text[-2].isalpha():
            text = text[:-1] + part
        else:
            text = f"{text} {part}" if text else part
    return text


def _heading_level(para: Paragraph, body: float) -> int:
    if body <= 0 or len(para.lines) > 3:
        return 0
    words = sum(len(line.words) for line in para.lines)
    if words == 0 or words > MAX_HEADING_WORDS:
        return 0
    size = statistics.median(line.size for line in para.lines)
    if size >= H1_RATIO * body:
        return 1
    if size >= H2_RATIO * body:
        return 2
    return 0


MAX_CELL_WORDS = 5  # a block whose lines all have at most this many words may be a table column


def _is_column_block(block: Block, body: float) -> bool:
    """Short lines going down the page: maybe one column of a table Tesseract split.

    A block whose lines go back up is a paragraph running on from the foot of one column to the
    head of the next (regions.join_across_columns): prose, never a table's column. Regrouped by
    position, its second half was paired with the lines beside it in the previous column
    (a magazine page at 12.45 % CER).
    """
    lines = [line for p in block.paragraphs for line in p.lines if line.words]
    goes_down = all(
        b.box[1] >= a.box[1] - (a.box[3] - a.box[1]) / 2 for a, b in zip(lines, lines[1:], strict=False)
    )
    return bool(lines) and goes_down and all(
        len(line.words) <= MAX_CELL_WORDS and line.size < H2_RATIO * body for line in lines
    )


def _rows(blocks: list[Block]) -> list[Line]:
    """Lines of side-by-side blocks regrouped into rows by their vertical position."""
    lines = sorted(
        (line for b in blocks for p in b.paragraphs for line in p.lines if line.words),
        key=lambda line: (line.box[1] + line.box[3]) / 2,
    )
    rows: list[list[Line]] = []
    for line in lines:
        if rows:
            last = rows[-1]
            top = min(x.box[1] for x in last)
            bottom = max(x.box[3] for x in last)
            overlap = min(bottom, line.box[3]) - max(top, line.box[1])
            if overlap > 0.5 * min(bottom - top, line.box[3] - line.box[1]):
                last.append(line)
                continue
        rows.append([line])
    out = []
    for row in rows:
        row.sort(key=lambda line: line.box[0])
        words = [w for line in row for w in line.words]
        box = (
            min(x.box[0] for x in row),
            min(x.box[1] for x in row),
            max(x.box[2] for x in row),
            max(x.box[3] for x in row),
        )
        out.append(Line(words, box, max(x.size for x in row), [list(x.words) for x in row]))
    return out


def merge_table_columns(blocks: list[Block], body: float) -> list[Block]:
    """Rebuild tables that Tesseract split into one block per column.

    Tesseract's layout analysis often reads a table with wide gaps column by column (measured on
    generated pages): consecutive blocks of short lines are regrouped into rows by position, and
    kept as rows if at least two rows then have two or more cells side by side.
    """
    out: list[Block] = []
    i = 0
    while i < len(blocks):
        j = i
        while j < len(blocks) and _is_column_block(blocks[j], body):
            j += 1
        if j - i >= 2:
            rows = _rows(blocks[i:j])
            if sum(1 for r in rows if r.cells and len(r.cells) >= 2) >= 2:
                # Single-cell rows above or below the table stay ordinary paragraphs.
                while rows and len(rows[0].cells or []) < 2:
                    out.append(Block([Paragraph([rows.pop(0)])]))
                tail = []
                while rows and len(rows[-1].cells or []) < 2:
                    tail.insert(0, Block([Paragraph([rows.pop()])]))
                out.append(Block([Paragraph(rows)]))
                out.extend(tail)
                i = j
                continue
        out.extend(blocks[i : max(j, i + 1)])
        i = max(j, i + 1)
    return out


# A right-aligned part: a page number, price or amount (roman page numbers too).
AMOUNT = re.compile(r"^[(\[]?[$€£¥]?[-+]?\d[\d,.:']*[%)\]]?$|^[ivxlcdm]{1,6}$", re.IGNORECASE)
LEADER = re.compile(r"^[.·…_·-]{2,}$|^[.·…|]$")  # a lone dot or bar: what is left of a leader
TRAILING_LEADER = re.compile(r"\s*[.·…_]{3,}$")
LEAD_IN_WORDS = 4  # "Contents", "Table of Contents": a short line standing alone above a list


def entry(line: Line) -> tuple[str, str] | None:
    """(label, right-aligned number) when the line is a list entry: a ToC line, a receipt item.

    The number is set off by a wide gap or by dot leaders; the leaders themselves are dropped.
    """
    words = [w for w in line.words if not LEADER.match(w.text)]
    if len(words) < 2 or not AMOUNT.match(words[-1].text):
        return None
    label_words = words[:-1]
    leaders = len(words) != len(line.words) or bool(TRAILING_LEADER.search(label_words[-1].text))
    height = max(1, line.box[3] - line.box[1])
    if not leaders:
        if words[-1].box[0] - label_words[-1].box[2] <= CELL_GAP * height:
            return None
        # The label is one run of words: a row of three cells is a table, not an entry.
        for prev, word in zip(label_words, label_words[1:], strict=False):
            if word.box[0] - prev.box[2] > CELL_GAP * height:
                return None
    label = TRAILING_LEADER.sub("", " ".join(w.text for w in label_words)).strip()
    if not any(c.isalpha() for c in label):
        return None
    return label, words[-1].text


ENTRY_SHARE = 2 / 3  # a paragraph with this share of entries is a list: one line each


def _entries_markdown(para: Paragraph) -> str | None:
    """A list of entries, one per line; None unless most lines are entries.

    The other lines (a misread amount `13°71`, an entry whose number was lost) stay lines of
    their own when they have at most two parts, instead of turning the list into a paragraph or
    a two-column table.
    """
    lines = [line for line in para.lines if line.words]
    found = [entry(line) for line in lines]
    hits = sum(e is not None for e in found)
    if not hits or hits < ENTRY_SHARE * len(lines):
        return None
    if any(e is None and len(split_cells(line)) > 2 for e, line in zip(found, lines, strict=True)):
        return None
    out = []
    for e, line in zip(found, lines, strict=True):
        text = f"{e[0]} {e[1]}" if e else " ".join(w.text for w in line.words if not LEADER.match(w.text))
        out.append(text.replace("|", "\\|"))
    return "\n".join(out)


def _table_block_markdown(rows: list[list[str]]) -> str:
    width = max(len(r) for r in rows)
    grid = [[c.replace("|", "\\|") for c in r] + [""] * (width - len(r)) for r in rows]
    out = ["| " + " | ".join(grid[0]) + " |", "|" + "---|" * width]
    out += ["| " + " | ".join(row) + " |" for row in grid[1:]]
    return "\n".join(out)


@dataclass
class Part:
    """One piece of the page's markdown (a paragraph, heading, list or table) and where it is.

    `kind` is the API's block type: text, title, list, table, caption, header or footer.
    """

    text: str
    kind: str
    box: Box | None


def union(boxes: list[Box]) -> Box | None:
    """The smallest box holding every box given (None for none)."""
    if not boxes:
        return None
    x0s, y0s, x1s, y1s = zip(*boxes, strict=True)
    return (min(x0s), min(y0s), max(x1s), max(y1s))


def _lines_box(lines: list[Line]) -> Box | None:
    return union([line.box for line in lines if line.words])


_PART_KIND = {"header": "header", "footer": "footer", "caption": "caption", "headline": "title"}


def to_markdown(blocks: list[Block]) -> str:
    """Paragraphs separated by blank lines, '#'/'##' headings, tables as markdown tables."""
    return "\n\n".join(p.text for p in parts(blocks) if p.text)


def parts(blocks: list[Block]) -> list[Part]:
    """The page's markdown pieces in reading order, each typed and with its box."""
    body = body_size([b for b in blocks if b.kind != "table"])
    blocks = merge_table_columns(blocks, body)
    # Flatten to paragraphs in reading order, then find runs of table rows across paragraph and
    # block boundaries (Tesseract often splits one table into several blocks).
    items: list[Paragraph | Block] = []
    kinds: dict[int, str] = {}
    for b in blocks:
        if b.kind == "table" and b.table:
            items.append(b)
        for p in b.paragraphs:
            if any(line.words for line in p.lines):
                items.append(p)
                kinds[id(p)] = b.kind
    out: list[Part] = []
    pending_rows: list[Line] = []
    pending_paras: list[Paragraph] = []

    def para_part(para: Paragraph, lead_in: bool = False) -> Part:
        text, level = _paragraph_markdown(para, body, lead_in)
        kind = _PART_KIND.get(kinds.get(id(para), "body"), "text")
        if level and kind not in ("header", "footer"):
            kind = "title"
        elif kind == "title":
            kind = "text"  # a headline block whose type did not make it a heading
        return Part(text, kind, _lines_box(para.lines))

    def flush_rows() -> None:
        if not pending_rows:
            return
        table = table_markdown(pending_rows) if len(pending_rows) >= 2 else None
        if table:
            out.append(Part(table, "table", _lines_box(pending_rows)))
        else:
            out.extend(para_part(para) for para in pending_paras)
        pending_rows.clear()
        pending_paras.clear()

    for i, para in enumerate(items):
        if isinstance(para, Block):
            flush_rows()
            out.append(Part(_table_block_markdown(para.table or []), "table", para.box))
            continue
        entries = _entries_markdown(para)
        if entries:
            flush_rows()
            out.append(Part(entries, "list", _lines_box(para.lines)))
            continue
        rows = [line for line in para.lines if line.words]
        if rows and all(len(split_cells(line)) >= 2 for line in rows):
            pending_rows.extend(rows)
            pending_paras.append(para)
            continue
        flush_rows()
        nxt = items[i + 1] if i + 1 < len(items) else None
        out.append(para_part(para, lead_in=_is_lead_in(para, nxt)))
    flush_rows()
    return [p for p in out if p.text]


def _is_lead_in(para: Paragraph, nxt: Paragraph | Block | None) -> bool:
    """A short line standing alone right above a list of entries: the list's title."""
    lines = [line for line in para.lines if line.words]
    if len(lines) != 1 or len(lines[0].words) > LEAD_IN_WORDS or not isinstance(nxt, Paragraph):
        return False
    text = lines[0].text
    return (
        text[-1:] not in ".,;:" and not AMOUNT.match(lines[0].words[-1].text) and bool(_entries_markdown(nxt))
    )


def _paragraph_markdown(para: Paragraph, body: float, lead_in: bool = False) -> tuple[str, int]:
    """The paragraph's markdown and its heading level (0: not a heading)."""
    text = _join_lines(para.lines)
    if not text:
        return "", 0
    level = _heading_level(para, body) or (2 if lead_in else 0)
    if level:
        return "#" * level + " " + text, level
    # A body paragraph starting with '#' or '>' would become a heading or a quote: keep it literal.
    if text[0] in "#>":
        text = "\\" + text
    return text, 0


def margins(blocks: list[Block]) -> dict[str, str | None]:
    """The page's running header and footer text (blocks classified by regions.arrange), or None.

    Named as the Mistral API names its per-page fields, for the page dict to carry.
    """
    out: dict[str, str | None] = {}
    for kind in ("header", "footer"):
        text = " ".join(_join_lines(p.lines) for b in blocks if b.kind == kind for p in b.paragraphs).strip()
        out[kind] = text or None
    return out


@dataclass
class PageText:
    """A page's markdown, the header/footer taken out of it (None when not asked or not found),
    and every part of the page in reading order (the taken header/footer included)."""

    markdown: str
    header: str | None
    footer: str | None
    parts: list[Part]


def page_text(blocks: list[Block], header: bool = True, footer: bool = True) -> PageText:
    """The page's markdown with its running header/footer taken out only when asked (as the API's
    `extract_header`/`extract_footer` do); otherwise they stay in the markdown, first and last."""
    found = margins(blocks)
    taken = {k for k, asked in (("header", header), ("footer", footer)) if asked and found[k]}
    body = parts([b for b in blocks if b.kind not in taken])
    ordered = [_margin_part(blocks, "header", found)] if "header" in taken else []
    ordered += body
    if "footer" in taken:
        ordered.append(_margin_part(blocks, "footer", found))
    return PageText(
        "\n\n".join(p.text for p in body),
        found["header"] if "header" in taken else None,
        found["footer"] if "footer" in taken else None,
        ordered,
    )


def _margin_part(blocks: list[Block], kind: str, found: dict[str, str | None]) -> Part:
    return Part(found[kind] or "", kind, union([b.box for b in blocks if b.kind == kind and b.box]))


def api_blocks(found: list[Part], width: int, height: int) -> list[dict[str, object]]:
    """The parts as the API's typed blocks (`pages[].blocks[]`): type, content and the box in
    pixels of the page image, clipped to it."""
    out: list[dict[str, object]] = []
    for part in found:
        if part.box is None:
            continue
        block = {"type": part.kind, "content": part.text, **box_fields(part.box, width, height)}
        if part.kind == "table":
            block["table_id"] = None  # the table is in the markdown, not in pages[].tables
        out.append(block)
    return out


def box_fields(box: Box, width: int, height: int) -> dict[str, int]:
    """top_left_x/y, bottom_right_x/y as the API names them, inside a width x height page."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return {
        "top_left_x": min(max(0, x0), width),
        "top_left_y": min(max(0, y0), height),
        "bottom_right_x": min(max(0, x1), width),
        "bottom_right_y": min(max(0, y1), height),
    }
