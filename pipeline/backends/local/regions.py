"""Page regions: ruled grids as tables, recovered lines put back, blocks classified and ordered.

Tesseract's blocks come in its own order; on magazine pages that order puts a headline, a caption
or a footer between two halves of a sentence (issue 15). Here each block is classified by where it
sits and how large its type is (header, footer, caption, headline, body), a drop cap is joined to
its paragraph, and the blocks are put in reading order: header, then bands separated by
full-width blocks, each band read column by column, captions after the text of their band, footer.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable

from pipeline.backends.local.columns import Region
from pipeline.backends.local.layout import (
    AMOUNT,
    CELL_GAP,
    LEADER,
    Block,
    Box,
    Line,
    Paragraph,
    Word,
    body_size,
)
from pipeline.backends.local.rules import Grid
from pipeline.backends.local.tables import Table

HEADER_ZONE = 0.08  # share of the page height at the top that can hold a running header
FOOTER_ZONE = 0.08  # ... and at the bottom a footer
MARGIN_TEXT = 1.15  # header/footer type is no larger than this times the body's
HEADLINE_RATIO = 1.25  # a block whose type is this much larger than the body's is a headline
CAPTION_RATIO = 0.95  # caption type is smaller than the body's
CAPTION_MAX_LINES = 3
DROP_CAP_RATIO = 1.8  # a one-letter block this much taller than the body text is a drop cap


def _words(block: Block) -> list[Word]:
    return [w for p in block.paragraphs for line in p.lines for w in line.words]


def _lines(block: Block) -> list[Line]:
    return [line for p in block.paragraphs for line in p.lines if line.words]


# --- ruled grids -------------------------------------------------------------------------------


def _index(edges: list[int], v: float) -> int | None:
    for i in range(len(edges) - 1):
        if edges[i] <= v < edges[i + 1]:
            return i
    return None


def tables_from_grids(blocks: list[Block], grids: list[Grid]) -> list[Block]:
    """Words inside a ruled grid go to its cells; the grid becomes a table block."""
    if not grids:
        return blocks
    tables = []
    for grid in grids:
        nrows, ncols = grid.shape
        cells: list[list[list[str]]] = [[[] for _ in range(ncols)] for _ in range(nrows)]
        x0, y0, x1, y1 = grid.box
        for block in blocks:
            for para in block.paragraphs:
                for line in para.lines:
                    kept = []
                    for w in line.words:
                        cx, cy = (w.box[0] + w.box[2]) / 2, (w.box[1] + w.box[3]) / 2
                        r, c = _index(grid.rows, cy), _index(grid.cols, cx)
                        if x0 <= cx <= x1 and y0 <= cy <= y1 and r is not None and c is not None:
                            cells[r][c].append(w.text)
                        else:
                            kept.append(w)
                    line.words = kept
        rows = [[" ".join(c) for c in row] for row in cells]
        rows = [row for row in rows if any(row)]
        if rows:
            tables.append(Block(kind="table", table=rows, grid_box=grid.box))
    return _pruned([b for b in blocks if _words(b)]) + tables


def _pruned(blocks: list[Block]) -> list[Block]:
    """Lines and paragraphs left without words dropped, line boxes fitted to their words."""
    for block in blocks:
        for para in block.paragraphs:
            para.lines = [line for line in para.lines if line.words]
            for line in para.lines:
                line.box = _union([w.box for w in line.words])
        block.paragraphs = [p for p in block.paragraphs if p.lines]
    return blocks


def tables_from_cells(blocks: list[Block], found: list[Table], texts: list[list[list[str]]]) -> list[Block]:
    """Borderless tables read cell by cell replace the words Tesseract read inside them."""
    for table in found:
        for block in blocks:
            for para in block.paragraphs:
                for line in para.lines:
                    pad = 0 if table.ruled else table.glyph
                    line.words = [w for w in line.words if not _inside(w.box, table.box, pad)]
    kept = _pruned([b for b in blocks if b.kind == "table" or _words(b)])
    tables = []
    for table, rows in zip(found, texts, strict=True):
        rows = [row for row in rows if any(row)]  # a ruled grid's empty rows
        if rows:
            tables.append(Block(kind="table", table=rows, grid_box=table.box))
    return kept + tables


def _inside(box: Box, area: Box, pad: float) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return area[0] - pad <= cx <= area[2] + pad and area[1] - pad <= cy <= area[3] + pad


def _union(boxes: list[Box]) -> Box:
    xs0, ys0, xs1, ys1 = zip(*boxes, strict=True)
    return (min(xs0), min(ys0), max(xs1), max(ys1))


# --- lines recovered from unread ink -----------------------------------------------------------


def _v_overlap(a: Box, b: Box) -> float:
    return (min(a[3], b[3]) - max(a[1], b[1])) / max(1, min(a[3] - a[1], b[3] - b[1]))


def skew(blocks: list[Block], line_h: float) -> float:
    """The page's tilt as dy/dx, the median over lines whose words span a few line heights."""
    slopes = []
    for line in (line for b in blocks for p in b.paragraphs for line in p.lines if len(line.words) >= 2):
        a, b = line.words[0].box, line.words[-1].box
        dx = (b[0] + b[2] - a[0] - a[2]) / 2
        if dx > 3 * line_h:
            slopes.append((b[3] - a[3]) / dx)  # bottoms: the baseline, free of ascenders
    return statistics.median(slopes) if slopes else 0.0


def merge_lines(blocks: list[Block], recovered: list[Line], slope: float = 0.0) -> None:
    """Put lines read from leftover ink back: into the line at the same height, or a new block.

    A right-aligned price or page number belongs to the line it sits on, however wide the gap;
    "the same height" follows the page's tilt (`slope`, dy/dx).
    """
    existing = [line for b in blocks for p in b.paragraphs for line in p.lines if line.words]
    pending: list[Line] = []
    for new in recovered:
        best = None
        # Only a short part (a price, a page number) joins a line; longer text is its own block.
        for line in existing if len(new.words) <= MAX_JOINED_WORDS else []:
            gap = max(line.box[0] - new.box[2], new.box[0] - line.box[2])
            if gap < 0:
                continue
            # Where the existing line would be at the new line's x, following the tilt.
            if new.box[0] >= line.box[2]:
                shift = slope * (new.box[0] - line.box[2])
                ref = line.words[-1].box
            else:
                shift = slope * (new.box[2] - line.box[0])
                ref = line.words[0].box
            moved = (ref[0], round(ref[1] + shift), ref[2], round(ref[3] + shift))
            if _v_overlap(moved, new.box) > 0.5 and (best is None or gap < best[0]):
                best = (gap, line)
        if best is None:
            pending.append(new)
            continue
        line = best[1]
        line.words = sorted(line.words + new.words, key=lambda w: w.box[0])
        line.box = _union([line.box, new.box])
        line.cells = None
    if pending:
        blocks.append(Block([Paragraph(pending)]))


MAX_JOINED_WORDS = 2


def attach_numbers(blocks: list[Block], measure_slope: Callable[[], float]) -> None:
    """Lone right-aligned numbers (a page number, a price) back onto the line they end.

    Tesseract often reads a column of page numbers or prices as blocks of their own, one number
    each, and orders them between the entries (`4`, `1 Outlook`, `18`, `2 Index`, ...). A line
    holding only an amount, with a line at its height (following the tilt) to its left, joins it.
    """
    lone = [
        (block, para, line)
        for block in blocks
        if block.kind != "table"
        for para in block.paragraphs
        for line in para.lines
        if 0 < len(line.words) <= MAX_JOINED_WORDS and all(AMOUNT.match(w.text) for w in line.words)
    ]
    if not lone:
        return
    # One column of them (right edges aligned): numbers in several columns are a table's cells.
    rights = sorted(line.box[2] for _, _, line in lone)
    height = statistics.median(line.box[3] - line.box[1] for _, _, line in lone)
    if rights[-1] - rights[0] > 2 * height:
        return
    moved = {id(line) for _, _, line in lone}
    slope = measure_slope()  # only now: most pages have no lone numbers
    fixed = [
        line
        for b in blocks
        if b.kind != "table"
        for p in b.paragraphs
        for line in p.lines
        if line.words and id(line) not in moved
    ]
    for _, para, line in lone:
        target = _line_left_of(fixed, line, slope)
        if target is None:
            continue
        target.words = sorted(target.words + line.words, key=lambda w: w.box[0])
        target.box = _union([target.box, line.box])
        target.cells = None
        para.lines.remove(line)
    for block in blocks:
        block.paragraphs = [p for p in block.paragraphs if p.lines]


def _line_left_of(lines: list[Line], new: Line, slope: float) -> Line | None:
    """The nearest line ending left of `new` at its height, following the page's tilt."""
    best = None
    for line in lines:
        gap = new.box[0] - line.box[2]
        if gap < 0:
            continue
        # The last word of letter height (not a leader's dot or a stray `|`).
        tall = [w for w in line.words if w.box[3] - w.box[1] >= 0.5 * (new.box[3] - new.box[1])]
        ref = (tall or line.words)[-1].box
        shift = slope * (new.box[0] - ref[2])
        moved = (ref[0], round(ref[1] + shift), ref[2], round(ref[3] + shift))
        # The measured tilt is rough (descenders): the line overlapping best, if it overlaps enough.
        overlap = _v_overlap(moved, new.box)
        if overlap > MIN_ROW_OVERLAP and (best is None or (overlap, -gap) > best[0]):
            best = ((overlap, -gap), line)
    return None if best is None else best[1]


MIN_ROW_OVERLAP = 0.25
MIN_COLUMN_AMOUNTS = 3  # right-aligned amounts in a column before its misfits are read again
FORMAT_SHARE = 2 / 3  # the share of a column's amounts that sets its format
MAX_AMOUNT_CHARS = 12


Format = tuple[str, int]  # an amount's decimal separator and digits after it: ('.', 2) for `12.53`


def amount_format(text: str) -> Format:
    """The decimal separator and digits after it (`12.53`: ('.', 2)); ('', 0) for integers and
    thousands (`1,234`). The separator counts: `35:23` in a column of `12.53` is a misread
    point (read at confidence 92, so the digits alone would have let it pass)."""
    m = re.search(r"([.,:'])(\d+)\D*$", text)
    return (m.group(1), len(m.group(2))) if m and len(m.group(2)) <= 2 else ("", 0)


def right_column(blocks: list[Block]) -> tuple[list[Word], Format | None]:
    """The words ending lines in a right-aligned column of amounts, and the column's format
    (None when it has none).

    A column of prices or page numbers (three or more amounts, set off from their lines, whose
    right edges line up) sets a format (`12.53`: a point, two decimals) when most of its amounts share
    it. A word on that edge that is no amount (`13°71`, `TAL`) or not in the format (`1253`)
    was misread; one that fits may be misread too (`4` for `1`): the caller reads them again.
    """
    ends = [line.words[-1] for b in blocks if b.kind != "table" for line in _lines(b) if _set_off(line)]
    amounts = [w for w in ends if fits(w.text, None)]
    if len(amounts) < MIN_COLUMN_AMOUNTS:
        return [], None
    height = statistics.median(w.box[3] - w.box[1] for w in amounts)
    edge = max((w.box[2] for w in amounts), key=lambda r: sum(abs(w.box[2] - r) <= height for w in amounts))
    column = [w for w in ends if abs(w.box[2] - edge) <= height and len(w.text) <= MAX_AMOUNT_CHARS]
    found = [w for w in column if fits(w.text, None)]
    if len(found) < MIN_COLUMN_AMOUNTS:
        return [], None
    fmt, n = Counter(amount_format(w.text) for w in found).most_common(1)[0]
    dominant = fmt if n >= FORMAT_SHARE * len(found) else None
    return column, dominant


def _set_off(line: Line) -> bool:
    """The line's last word stands apart: alone, after a wide gap, or after dot leaders (the end
    of justified prose is no column of amounts)."""
    if len(line.words) == 1:
        return True
    prev, last = line.words[-2], line.words[-1]
    height = max(1, line.box[3] - line.box[1])
    return last.box[0] - prev.box[2] > CELL_GAP * height or bool(LEADER.match(prev.text))


def fits(text: str, dominant: Format | None) -> bool:
    """An amount, in the column's format when it has one."""
    ok = bool(AMOUNT.match(text)) and any(c.isdigit() for c in text)
    return ok and (dominant is None or amount_format(text) == dominant)


# --- classification and reading order ----------------------------------------------------------


def _size(block: Block) -> float:
    lines = _lines(block)
    return statistics.median(line.size for line in lines) if lines else 0.0


def classify(blocks: list[Block], width: int, height: int, body: float, pictures: list[Box]) -> None:
    """Set each block's kind from its position and type size (tables keep theirs)."""
    images = list(pictures)
    for block in blocks:
        if block.kind == "table" or block.box is None:
            continue
        x0, y0, x1, y1 = block.box
        size = _size(block)
        nlines = len(_lines(block))
        small = body <= 0 or size <= MARGIN_TEXT * body
        if y1 <= HEADER_ZONE * height and small and nlines <= 2:
            block.kind = "header"
        elif y0 >= (1 - FOOTER_ZONE) * height and small and nlines <= 2:
            block.kind = "footer"
        elif body > 0 and size >= HEADLINE_RATIO * body and nlines <= 3:
            block.kind = "headline"
        elif nlines <= CAPTION_MAX_LINES and 0 < size < CAPTION_RATIO * body and _near(block.box, images):
            block.kind = "caption"
        else:
            block.kind = "body"


def _near(box: Box, images: list[Box]) -> bool:
    return any(min(box[2], im[2]) - max(box[0], im[0]) > 0 and -50 < box[1] - im[3] < 120 for im in images)


def place(blocks: list[Block], parts: list[Region]) -> None:
    """Blocks added after the region reading (recovered ink) take the band of the region they sit in."""
    for block in blocks:
        if block.band is not None or block.box is None:
            continue
        x0, y0, x1, y1 = block.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        for part in parts:
            if part.box[0] <= cx < part.box[2] and part.box[1] <= cy < part.box[3]:
                block.band, block.column = part.band, part.column
                break


_ZONE = {"header": 0, "footer": 2}


def arrange(blocks: list[Block], width: int, height: int, pictures: list[Box] | None = None) -> list[Block]:
    """Classify the blocks and return them in reading order.

    Blocks read region by region (they carry a band) keep that order, except that the running
    header comes first, the footer last, and a caption after the text of its band: neither
    splits a sentence that runs on from one column to the next.
    """
    if not blocks:
        return blocks
    body = body_size(blocks)
    classify(blocks, width, height, body, pictures or [])
    join_drop_caps(blocks, body)
    blocks = [b for b in blocks if b.kind == "table" or _words(b)]
    if any(b.band is not None for b in blocks):
        last = max(b.band or 0 for b in blocks)
        ordered = sorted(
            blocks,
            key=lambda b: (
                _ZONE.get(b.kind, 1),
                last + 1 if b.band is None else b.band,
                b.kind == "caption",
            ),
        )
        return join_across_columns(ordered)
    return (
        sorted(blocks, key=lambda b: (b.box or (0, 0, 0, 0))[1])
        if any(b.kind == "table" for b in blocks)
        else blocks
    )


SENTENCE_END = (".", "!", "?", ":", '"', "”")


def join_across_columns(blocks: list[Block]) -> list[Block]:
    """A paragraph running on from the foot of one column to the head of the next is one paragraph.

    The column's last paragraph ends without a sentence's end and the next column (same band)
    starts with a lower-case word: the lines are joined, so no sentence is cut in two.
    """
    out: list[Block] = []
    for block in blocks:
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev.kind == block.kind == "body"
            and prev.band == block.band is not None
            and prev.column < block.column
            and prev.paragraphs
            and block.paragraphs
        ):
            tail, head = prev.paragraphs[-1], block.paragraphs[0]
            last_words = [w for line in tail.lines for w in line.words]
            first_words = [w for line in head.lines for w in line.words]
            if (
                last_words
                and first_words
                and not last_words[-1].text.endswith(SENTENCE_END)
                and first_words[0].text[:1].islower()
            ):
                tail.lines.extend(head.lines)
                block.paragraphs = block.paragraphs[1:]
                if not block.paragraphs:
                    continue
        out.append(block)
    return out


def join_drop_caps(blocks: list[Block], body: float) -> None:
    """A drop cap (one tall capital) joined to the first word of its paragraph: `O ur` -> `Our`.

    Tesseract puts the capital at the start of the first or the second line it spans, or in a
    block of its own; the lines beside it may be split into two paragraphs. The capital joins
    the first word of the topmost line beside it, and the paragraphs beside it become one.
    """
    if body <= 0:
        return
    for block in blocks:
        for line in [line for p in block.paragraphs for line in p.lines]:
            _split_glued_cap(line, body)
            if not line.words or not _is_drop_cap(line.words[0], body, line):
                continue
            if len(line.words) == 1 and len(_lines(block)) > 1:
                continue  # a capital on a line of its own inside a block: leave it
            cap = line.words[0]
            pool = [b for b in blocks if b is block or (b.band is not None and
                    (b.band, b.column) == (block.band, block.column))]
            beside = [
                (b, p, other)
                for b in pool
                for p in b.paragraphs
                for other in p.lines
                if other.words
                and (other.words[0] is not cap or len(other.words) > 1)
                and _v_overlap(other.box, cap.box) > 0
                and _first(other, cap).box[0] >= cap.box[2] - 0.2 * body
            ]
            if not beside:
                continue
            target_block, _, target = min(beside, key=lambda t: t[2].box[1])
            first = _first(target, cap)
            if not first.text[:1].islower():
                continue
            line.words.remove(cap)
            if line.words:
                line.box = _union([w.box for w in line.words])
            first.text = cap.text + first.text
            _merge_paragraphs(target_block, [p for b, p, _ in beside if b is target_block])


def put_drop_caps(blocks: list[Block], caps: list[Word]) -> None:
    """Drop caps read on their own go in front of the topmost line beside them (joined later)."""
    lines = [line for b in blocks for p in b.paragraphs for line in p.lines if line.words]
    for cap in caps:
        reach = 3 * (cap.box[3] - cap.box[1])
        beside = [
            line
            for line in lines
            if _v_overlap(line.box, cap.box) > 0 and 0 <= line.words[0].box[0] - cap.box[2] < reach
        ]
        if beside:
            line = min(beside, key=lambda line: line.box[1])
            line.words.insert(0, cap)


def _first(line: Line, skip: Word) -> Word:
    return line.words[1] if line.words[0] is skip and len(line.words) > 1 else line.words[0]


def _merge_paragraphs(block: Block, paras: list[Paragraph]) -> None:
    """The given paragraphs of `block` (consecutive) become the first of them."""
    ids = {id(p) for p in paras}
    kept: list[Paragraph] = []
    into: Paragraph | None = None
    for para in block.paragraphs:
        if id(para) in ids:
            if into is None:
                into = para
                kept.append(para)
            else:
                into.lines.extend(para.lines)
            continue
        kept.append(para)
    if into is not None:
        into.lines = sorted((line for line in into.lines if line.words), key=lambda line: line.box[1])
    block.paragraphs = kept


def _is_drop_cap(word: Word, body: float, line: Line | None = None) -> bool:
    """One capital letter far taller than the body text and than the rest of its line."""
    return len(word.text) == 1 and word.text.isalpha() and word.text.isupper() and _towers(word, body, line)


def _towers(word: Word, body: float, line: Line | None) -> bool:
    height = word.box[3] - word.box[1]
    others = [w.box[3] - w.box[1] for w in (line.words if line else []) if w is not word]
    # A headline's first letter is as tall as the rest of the headline: no drop cap.
    tall = height >= DROP_CAP_RATIO * body
    return tall and (not others or height >= DROP_CAP_RATIO * statistics.median(others))


def _split_glued_cap(line: Line, body: float) -> None:
    """`Tthe`: Tesseract read the drop cap and the word beside its second line as one word."""
    if len(line.words) < 2:
        return
    word = line.words[0]
    if len(word.text) < 2 or not (word.text[0].isupper() and word.text[1].islower()):
        return
    if not _towers(word, body, line):
        return
    x0, y0, x1, y1 = word.box
    cap_w = min(x1 - x0 - 1, int(0.8 * (y1 - y0)))
    rest = Word(word.text[1:], (x0 + cap_w, max(y0, y1 - int(body)), x1, y1), word.conf)
    line.words[0:1] = [Word(word.text[0], (x0, y0, x0 + cap_w, y1), word.conf), rest]
