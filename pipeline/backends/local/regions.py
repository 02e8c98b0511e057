"""Page regions: ruled grids as tables, recovered lines put back, blocks classified and ordered.

Tesseract's blocks come in its own order; on magazine pages that order puts a headline, a caption
or a footer between two halves of a sentence (issue 15). Here each block is classified by where it
sits and how large its type is (header, footer, caption, headline, body), a drop cap is joined to
its paragraph, and the blocks are put in reading order: header, then bands separated by
full-width blocks, each band read column by column, captions after the text of their band, footer.
"""

from __future__ import annotations

import statistics

from pipeline.backends.local.layout import Block, Box, Line, Paragraph, Word, body_size
from pipeline.backends.local.rules import Grid

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
    kept_blocks = [b for b in blocks if _words(b)]
    for block in kept_blocks:
        for para in block.paragraphs:
            para.lines = [line for line in para.lines if line.words]
            for line in para.lines:
                line.box = _union([w.box for w in line.words])
        block.paragraphs = [p for p in block.paragraphs if p.lines]
    return kept_blocks + tables


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
# --- classification and reading order ----------------------------------------------------------


def _size(block: Block) -> float:
    lines = _lines(block)
    return statistics.median(line.size for line in lines) if lines else 0.0


def classify(blocks: list[Block], width: int, height: int, body: float) -> None:
    """Set each block's kind from its position and type size (tables keep theirs)."""
    images = [b.box for b in blocks if b.kind == "image" and b.box]
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


def arrange(blocks: list[Block], width: int, height: int) -> list[Block]:
    """Classify the blocks and return them in reading order."""
    if not blocks:
        return blocks
    body = body_size(blocks)
    classify(blocks, width, height, body)
    return (
        sorted(blocks, key=lambda b: (b.box or (0, 0, 0, 0))[1])
        if any(b.kind == "table" for b in blocks)
        else blocks
    )
