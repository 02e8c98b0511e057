"""Ruling lines: find horizontal and vertical rules, erase them, and keep the grids they form.

Tesseract reads a ruling line as text (`|`, `™`, `==`) and its layout analysis cuts a ruled table
into the wrong columns (issue 15). Morphological opening with a long thin kernel keeps only ink
runs longer than any glyph: those are the rules. They are painted out before recognition, and
where horizontal and vertical rules cross into a grid, the grid gives the table's cells.
A grid is kept only when the evidence holds (at least 2 rows and 2 columns of closed cells);
otherwise the rules are just erased and the text keeps its ordinary layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]

MIN_H_RULE_INCH = 0.45  # a horizontal ink run this long is no glyph
MIN_V_RULE_INCH = 0.3
MAX_THICK_INCH = 0.04  # thicker than this is a filled shape, not a rule
MERGE_INCH = 0.03  # rules closer than this are one (double lines, scan blur)
FULL_SHARE = 0.75  # a rule reaching across this share of its ruled area is a grid line


@dataclass
class Grid:
    """A ruled table: rule positions in pixels, cells between consecutive rules."""

    box: Box
    rows: list[int]  # y of horizontal rules, top to bottom
    cols: list[int]  # x of vertical rules, left to right

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows) - 1, len(self.cols) - 1


@dataclass
class Prepared:
    """The page as Tesseract should see it, with what was learnt on the way."""

    image: Image.Image
    ink: np.ndarray  # bool mask of ink with the rules removed
    grids: list[Grid] = field(default_factory=list)
    rules: int = 0  # number of rule segments erased


def binarize(gray: np.ndarray, dpi: int) -> np.ndarray:
    """Ink mask robust to tinted paper and a background around the page (local threshold)."""
    block = max(15, int(dpi / 10) | 1)
    return cv2.adaptiveThreshold(gray, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, block, 15)


def _segments(mask: np.ndarray, horizontal: bool, max_thick: int) -> list[Box]:
    """Boxes of the thin runs in an opened mask.

    Thickness is the run's mean (area over length), not its box's: a rule on a page tilted by
    0.5 degrees rises 12 px over a 1370 px table, so its box is 16 px tall for a 4 px line (the
    box test lost the grid on most generated ruled pages).
    """
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for x, y, w, h, area in stats[1:count]:
        thick = area / max(1, w if horizontal else h)
        if thick <= max_thick:
            out.append((int(x), int(y), int(x + w), int(y + h)))
    return out


EDGE_CONTRAST = 50  # gray levels between a segment's two sides: the edge of a dark area


def _on_paper(gray: np.ndarray, seg: Box, horizontal: bool) -> bool:
    """The same ground on both sides of the segment: a rule, not the edge of a photo.

    The local threshold turns a photo's border into a thin band of ink along its inside (paper
    on one side, the picture's 95-175 gray on the other); erased as a rule, it left specks read
    as `art`. Tinted paper or a shaded header row is the same on both sides of its rules.
    """
    x0, y0, x1, y1 = seg
    side = max(2, (y1 - y0) if horizontal else (x1 - x0))
    if horizontal:
        before, after = gray[max(0, y0 - side) : y0, x0:x1], gray[y1 : y1 + side, x0:x1]
    else:
        before, after = gray[y0:y1, max(0, x0 - side) : x0], gray[y0:y1, x1 : x1 + side]
    if before.size == 0 or after.size == 0:
        return True
    return abs(float(np.median(before)) - float(np.median(after))) <= EDGE_CONTRAST


def _positions(values: list[float], merge: int) -> list[int]:
    values = sorted(values)
    groups: list[list[float]] = []
    for v in values:
        if groups and v - groups[-1][-1] <= merge:
            groups[-1].append(v)
        else:
            groups.append([v])
    return [round(sum(g) / len(g)) for g in groups]


def _grid(hsegs: list[Box], vsegs: list[Box], merge: int) -> Grid | None:
    """A grid from the rules of one connected ruled area, if they make closed cells."""
    if len(hsegs) < 3 or len(vsegs) < 3:
        return None
    x0 = min(s[0] for s in hsegs)
    x1 = max(s[2] for s in hsegs)
    y0 = min(s[1] for s in vsegs)
    y1 = max(s[3] for s in vsegs)
    # Rules across the area (a broken one's pieces joined): a grid, not a box with an underline.
    across = [s for s in _joined(hsegs, True, merge) if s[2] - s[0] >= FULL_SHARE * (x1 - x0)]
    down = [s for s in _joined(vsegs, False, merge) if s[3] - s[1] >= FULL_SHARE * (y1 - y0)]
    rows = _positions([(s[1] + s[3]) / 2 for s in across], merge)
    cols = _positions([(s[0] + s[2]) / 2 for s in down], merge)
    if len(rows) < 2 or len(cols) < 3:
        return None
    # Where the noise took the top or bottom rule, the vertical rules still end at the table's
    # edge: the grid reaches them (else the rows beyond come out as a second table).
    if down and rows[0] - min(s[1] for s in down) > 3 * merge:
        rows.insert(0, min(s[1] for s in down))
    if down and max(s[3] for s in down) - rows[-1] > 3 * merge:
        rows.append(max(s[3] for s in down))
    if len(rows) < 3:
        return None
    return Grid((x0, y0, x1, y1), rows, cols)


def _joined(segs: list[Box], horizontal: bool, merge: int) -> list[Box]:
    """Collinear pieces of one rule (broken by a faint scan) joined into one segment.

    Pieces are collinear when their extents across the rule overlap (with `merge` of slack,
    which also allows for a tilted page: consecutive pieces of a tilted rule meet end to end).
    The joined segment spans the pieces; gaps of any length are bridged, as the caller only
    counts rules that reach across most of the ruled area.
    """
    a, b = (1, 3) if horizontal else (0, 2)  # the across-the-rule coordinates
    start, end = (0, 2) if horizontal else (1, 3)
    lines: list[list[int]] = []
    for s in sorted(segs, key=lambda s: s[start]):
        for line in lines:
            if s[a] <= line[b] + merge and line[a] <= s[b] + merge:
                line[a], line[b] = min(line[a], s[a]), max(line[b], s[b])
                line[start], line[end] = min(line[start], s[start]), max(line[end], s[end])
                break
        else:
            lines.append(list(s))
    return [(s[0], s[1], s[2], s[3]) for s in lines]


def prepare(image: Image.Image, dpi: int | None) -> Prepared:
    """Find rules, erase them, and return the image to read plus the grids and the ink mask."""
    res = dpi or 300
    gray = np.asarray(image.convert("L"))
    ink = binarize(gray, res)
    hlen = max(20, int(MIN_H_RULE_INCH * res))
    vlen = max(15, int(MIN_V_RULE_INCH * res))
    hmask = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (hlen, 1)))
    vmask = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, vlen)))
    max_thick = max(3, int(MAX_THICK_INCH * res))
    hsegs = [s for s in _segments(hmask, True, max_thick) if _on_paper(gray, s, True)]
    vsegs = [s for s in _segments(vmask, False, max_thick) if _on_paper(gray, s, False)]
    leaders = dot_leaders(ink, res)
    if not hsegs and not vsegs and not leaders.any():
        # A copy in memory: tesserocr encodes an image in its file's format at every SetImage
        # (measured: 0.65 s per magazine page opened from a PNG, in 147 calls; none for a copy).
        return Prepared(image.copy() if image.format else image, ink.astype(bool))
    # Only thin segments are rules: a filled dark area survives the opening too.
    both = hmask | vmask
    rules = np.zeros_like(ink)
    for x0, y0, x1, y1 in hsegs + vsegs:
        rules[y0:y1, x0:x1] = both[y0:y1, x0:x1]
    rules = cv2.dilate(rules, np.ones((5, 5), np.uint8)) | leaders
    grids = _grids(rules, hsegs, vsegs, max(2, int(MERGE_INCH * res)))
    arr = np.array(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    arr[rules.astype(bool)] = 255
    cleaned = Image.fromarray(arr)
    cleaned.info = dict(image.info)
    return Prepared(cleaned, (ink & ~rules).astype(bool), grids, len(hsegs) + len(vsegs))


MAX_DOT_INCH = 0.035  # a leader dot is no larger than this
MIN_LEADER_INCH = 0.6  # dots spaced at most DOT_GAP_INCH apart over this length are a leader
DOT_GAP_INCH = 0.09


def dot_leaders(ink: np.ndarray, res: int) -> np.ndarray:
    """Mask of dot leaders (`Intro . . . . . 3`): rows of small dots, which Tesseract reads as garbage."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    if count <= 1:
        return np.zeros_like(ink)
    w, h = stats[:, 2], stats[:, 3]
    most = max(2, int(MAX_DOT_INCH * res))
    is_dot = (w <= most) & (h <= most) & (w * 3 >= h) & (h * 3 >= w) & (stats[:, 4] >= 2)
    is_dot[0] = False
    if not is_dot.any():
        return np.zeros_like(ink)
    dots = is_dot[labels].astype(np.uint8)
    gap = max(3, int(DOT_GAP_INCH * res))
    joined = cv2.morphologyEx(dots, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (gap, 1)))
    run = max(10, int(MIN_LEADER_INCH * res))
    runs = cv2.morphologyEx(joined, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (run, 1)))
    if not runs.any():
        return np.zeros_like(ink)
    runs = cv2.dilate(runs, np.ones((3, 3), np.uint8))
    return (runs & cv2.dilate(dots, np.ones((3, 3), np.uint8))).astype(ink.dtype)


def _grids(rules: np.ndarray, hsegs: list[Box], vsegs: list[Box], merge: int) -> list[Grid]:
    """Group the segments by the connected ruled area they belong to, one grid per area."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(rules, connectivity=8)
    grids = []
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        if w < 2 * merge or h < 2 * merge:
            continue

        def inside(s: Box, x: int = x, y: int = y, w: int = w, h: int = h) -> bool:
            return s[0] >= x and s[2] <= x + w and s[1] >= y and s[3] <= y + h

        grid = _grid([s for s in hsegs if inside(s)], [s for s in vsegs if inside(s)], merge)
        if grid is not None:
            grids.append(grid)
    return grids
