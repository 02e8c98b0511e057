"""Borderless tables found from the ink's alignment, before Tesseract's segmentation can garble them.

Tesseract's page segmentation reads a borderless table with wide gaps badly (measured on the
generated pages of tests/layoutgen.py): a column split into one block per number, a line running
across three columns as one cell, a right-aligned `5,536` read as four lines `wn an w an`. No
regrouping of its words repairs that. So, on a page with neither ruled grids nor prose columns,
the binarised ink is cut into line fragments (glyphs a word space apart joined), fragments are
grouped into rows (the page's tilt undone), and a run of consecutive rows is a table when:

- every row holds at least two short fragments (cells, not prose lines),
- white gutters that no fragment of the run crosses cut it into three or more columns,
- no row has two fragments in one column, and most cells are filled.

Anything less is left to the alignment rule of layout.py: never a wrong grid. Each cell of a
table found here is then read on its own as one line (engine.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.backends.local.columns import Ink
from pipeline.backends.local.rules import Grid

Box = tuple[int, int, int, int]

MIN_COLUMNS = 3  # two columns are a list (a receipt, a table of contents): layout.py's entries
MIN_ROWS = 3
MAX_CELL_GLYPHS = 14.0  # a fragment wider than this many glyph heights is prose, not a cell
MIN_GUTTER_GLYPHS = 1.0  # white between columns, in glyph heights (a word space is ~0.4)
MAX_ROW_GAP_GLYPHS = 3.5  # rows further apart than this are not one table
MIN_FILL = 0.8  # share of the cells holding ink
ROW_TOLERANCE = 0.6  # fragments whose centres (tilt undone) are this many glyph heights apart share a row


@dataclass(frozen=True)
class Table:
    """A borderless table: each cell's box (None when empty), rows top to bottom."""

    box: Box
    cells: list[list[Box | None]]
    glyph: float  # median glyph height on the page, pixels
    ruled: bool = False  # from a ruled grid (rules.py), not from alignment


def find(measured: Ink | None, measure_slope: Callable[[], float]) -> list[Table]:
    """Borderless tables of three or more columns on the page (see the module's rules).

    `measure_slope` (the page's tilt, dy/dx) is called only when the page has enough short
    fragments to hold a table: most pages do not.
    """
    if measured is None:
        return []
    frags, glyph = measured.fragments, measured.glyph
    if int(((frags[:, 2] - frags[:, 0]) <= MAX_CELL_GLYPHS * glyph).sum()) < MIN_COLUMNS * MIN_ROWS:
        return []
    rows = _rows(frags, glyph, measure_slope())
    tables = []
    for run in _runs(rows, glyph):
        table = _table(run, glyph)
        if table is not None:
            tables.append(table)
    return tables


def _rows(frags: np.ndarray, glyph: float, slope: float) -> list[np.ndarray]:
    """Fragments grouped into text rows by their centre height, the tilt undone."""
    cy = (frags[:, 1] + frags[:, 3]) / 2 - slope * (frags[:, 0] + frags[:, 2]) / 2
    order = np.argsort(cy, kind="stable")
    rows: list[list[int]] = []
    last = None
    for i in order:
        if last is not None and cy[i] - last <= ROW_TOLERANCE * glyph:
            rows[-1].append(int(i))
        else:
            rows.append([int(i)])
        last = cy[i]
    return [frags[sorted(r, key=lambda i: frags[i, 0])] for r in rows]


def _is_cell_row(row: np.ndarray, glyph: float) -> bool:
    widths = row[:, 2] - row[:, 0]
    heights = row[:, 3] - row[:, 1]
    return len(row) >= 2 and bool((widths <= MAX_CELL_GLYPHS * glyph).all()) and bool(
        (heights <= 2.0 * glyph).all()
    )


def _runs(rows: list[np.ndarray], glyph: float) -> list[list[np.ndarray]]:
    """Maximal runs of consecutive cell rows, close together."""
    runs: list[list[np.ndarray]] = []
    current: list[np.ndarray] = []
    for row in rows:
        ok = _is_cell_row(row, glyph)
        if ok and current and row[:, 1].min() - current[-1][:, 3].max() <= MAX_ROW_GAP_GLYPHS * glyph:
            current.append(row)
            continue
        if len(current) >= MIN_ROWS:
            runs.append(current)
        current = [row] if ok else []
    if len(current) >= MIN_ROWS:
        runs.append(current)
    return runs


def _gutters(frags: np.ndarray, glyph: float) -> list[tuple[int, int]]:
    """x-intervals at least MIN_GUTTER_GLYPHS wide that no fragment covers, inside the run."""
    left, right = int(frags[:, 0].min()), int(frags[:, 2].max())
    covered = np.zeros(right - left, bool)
    for x0, _, x1, _ in frags:
        covered[x0 - left : x1 - left] = True
    gaps, start = [], None
    for x, c in enumerate(covered):
        if not c and start is None:
            start = x
        elif c and start is not None:
            if x - start >= MIN_GUTTER_GLYPHS * glyph:
                gaps.append((left + start, left + x))
            start = None
    return gaps


def _table(run: list[np.ndarray], glyph: float) -> Table | None:
    frags = np.concatenate(run)
    gutters = _gutters(frags, glyph)
    ncols = len(gutters) + 1
    if ncols < MIN_COLUMNS:
        return None
    bounds = [int(frags[:, 0].min())] + [(a + b) // 2 for a, b in gutters] + [int(frags[:, 2].max()) + 1]
    cells: list[list[Box | None]] = []
    for row in run:
        line: list[Box | None] = [None] * ncols
        for x0, y0, x1, y1 in row:
            col = int(np.searchsorted(bounds, (x0 + x1) / 2, side="right")) - 1
            if not 0 <= col < ncols or line[col] is not None:
                return None  # two cells in one column: the columns are not what they seem
            line[col] = (int(x0), int(y0), int(x1), int(y1))
        cells.append(line)
    filled = sum(c is not None for line in cells for c in line)
    if filled < MIN_FILL * ncols * len(cells):
        return None
    # Every column holds cells in most rows (a stray mark does not make a column).
    if any(sum(line[c] is not None for line in cells) < MIN_FILL * len(cells) for c in range(ncols)):
        return None
    box = (int(frags[:, 0].min()), int(frags[:, 1].min()), int(frags[:, 2].max()), int(frags[:, 3].max()))
    return Table(box, cells, glyph)


CELL_MARGIN = 0.1  # share of a ruled cell's height kept clear of its rules (what is left of them)
MIN_PART = 0.15  # ink in a ruled cell shorter and narrower than this share of its height is a speck


def from_grid(grid: Grid, ink: np.ndarray) -> Table:
    """A ruled grid as a table of cell boxes: each the tight box of the glyph-sized ink inside
    the cell (None for an empty cell), so the cells are read like a borderless table's."""
    cells: list[list[Box | None]] = []
    heights = []
    for r in range(grid.shape[0]):
        row: list[Box | None] = []
        y0, y1 = grid.rows[r], grid.rows[r + 1]
        m = max(1, int(CELL_MARGIN * (y1 - y0)))
        for c in range(grid.shape[1]):
            x0, x1 = grid.cols[c], grid.cols[c + 1]
            box = _ink_box(ink[y0 + m : y1 - m, x0 + m : x1 - m], y1 - y0)
            if box is not None:
                box = (box[0] + x0 + m, box[1] + y0 + m, box[2] + x0 + m, box[3] + y0 + m)
                heights.append(box[3] - box[1])
            row.append(box)
        cells.append(row)
    glyph = float(np.median(heights)) if heights else 1.0
    # The cells' extent, not grid.box: a grid whose upper rules were lost in the noise has a box
    # reaching over rows it has no cells for (their text is read with the page).
    box = (grid.cols[0], grid.rows[0], grid.cols[-1], grid.rows[-1])
    return Table(box, cells, glyph, ruled=True)


def _ink_box(inner: np.ndarray, cell_h: int) -> Box | None:
    if inner.size == 0 or not inner.any():
        return None
    count, _, stats, _ = cv2.connectedComponentsWithStats(inner.astype(np.uint8), connectivity=8)
    least = MIN_PART * cell_h
    parts = [st for st in stats[1:count] if st[3] >= least or st[2] >= least]
    if not parts:
        return None
    return (
        int(min(st[0] for st in parts)),
        int(min(st[1] for st in parts)),
        int(max(st[0] + st[2] for st in parts)),
        int(max(st[1] + st[3] for st in parts)),
    )
