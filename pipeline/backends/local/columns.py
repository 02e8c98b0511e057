"""Columns found from the page's white space before recognition, and the order to read them in.

Tesseract's automatic segmentation merges lines across a narrow gutter (issue 15: on generated
two- and three-column pages with a 0.25 in gutter, `... 4,250 orders receive addi...`), and no
re-ordering of its blocks can undo that. So the page is cut first, on the binarised ink:

1. glyph-sized ink is joined into line fragments (a closing about one glyph height wide: words
   join, a gutter does not);
2. a gutter is an x-interval that almost no fragment covers (the vertical projection profile of the
   fragments), with a column of prose on each side (wide, several lines: a receipt's prices or a
   table's cells are no column);
3. fragments that span a gutter (a headline, a full-width paragraph, a centred footer) are
   full-width blocks; they and wide white gaps cut the page into bands;
4. a band with text in two or more columns is read column by column, left to right; every other
   band is read whole. Bands go top to bottom.

A page with no gutter gives None: it is read in one pass, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]

CLOSE_GLYPHS = 1.0  # fragments join ink closer than this many glyph heights (word spaces)
MIN_GUTTER = 1.2  # white between columns, in glyph heights (a word space is ~0.4, a gutter 2-3)
MIN_COLUMN = 12.0  # a column of prose is at least this many glyph heights wide (~15 characters)
MIN_COLUMN_LINES = 3
GUTTER_SHARE = 0.1  # a gutter is covered by at most this share of the fragments of its columns
BAND_GAP = 3.0  # white across the whole text width this tall (glyph heights) separates bands
PAD = 0.5  # regions are padded by this many glyph heights (clipped at the neighbours)
PICTURE_GRAY = 200  # darker than this ...
PICTURE_INCH = 0.08  # ... over solid areas this wide (no text stroke is) ...
MIN_PICTURE_INCH = 0.4  # ... and at least this large in both directions: a picture


@dataclass(frozen=True)
class Region:
    """A part of the page read on its own: `band` counts from the top, `column` from the left."""

    box: Box
    band: int
    column: int
    columns: int  # columns in this band (1: read whole)


@dataclass(frozen=True)
class PageLayout:
    regions: list[Region]
    pictures: list[Box]
    glyph: float  # median glyph height in pixels
    drop_caps: list[Box]  # one tall capital beside the first lines of a paragraph


DROP_CAP_GLYPHS = 2.2  # a drop cap is at least this many glyph heights tall ...
MAX_DROP_CAP_GLYPHS = 7.0  # ... and at most this


def drop_caps(mask: np.ndarray, glyph: float) -> list[Box]:
    """Tall single glyphs with two or more lines of body text starting right beside them.

    Tesseract reads a drop cap as a word of its own, glues it to a word of the second line
    (`Tthe`, the box of `the` only) or drops it: it is found here and read on its own.
    """
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    s = stats[1:count]
    x0, y0, w, h = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
    x1, y1 = x0 + w, y0 + h
    tall = (h >= DROP_CAP_GLYPHS * glyph) & (h <= MAX_DROP_CAP_GLYPHS * glyph) & (w <= 4 * glyph)
    small = h <= 1.6 * glyph
    found = []
    for i in np.flatnonzero(tall):
        cy = y0 + h / 2
        beside = small & (x0 >= x1[i]) & (x0 <= x1[i] + 2.5 * glyph) & (cy >= y0[i]) & (cy <= y1[i])
        rows = np.unique(np.round(cy[beside] / glyph))
        # Letters of a headline stand beside other tall letters; a drop cap does not.
        near = tall & (np.abs((x0 + x1) / 2 - (x0[i] + x1[i]) / 2) < 4 * glyph)
        near &= (y0 < y1[i]) & (y1 > y0[i])
        if len(rows) >= 2 and int(near.sum()) == 1 and np.ptp(rows) >= 1:
            found.append((int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])))
    return found


def pictures(gray: np.ndarray, dpi: int) -> list[Box]:
    """Solid dark areas larger than any glyph: photos, figures (text strokes are thinner)."""
    dark = (gray < PICTURE_GRAY).astype(np.uint8)
    k = max(3, int(PICTURE_INCH * dpi))
    solid = cv2.morphologyEx(dark, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    count, _, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    least = MIN_PICTURE_INCH * dpi
    return [
        (int(x), int(y), int(x + w), int(y + h))
        for x, y, w, h, _ in stats[1:count]
        if w >= least and h >= least
    ]


def _glyph_mask(ink: np.ndarray, dpi: int, pics: list[Box]) -> tuple[np.ndarray, float] | None:
    """Ink of glyph size (specks and pictures out) and the median glyph height."""
    mask = ink.astype(np.uint8)
    for x0, y0, x1, y1 in pics:
        mask[y0:y1, x0:x1] = 0
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return None
    h = stats[:, 3]
    plausible = (h >= 0.03 * dpi) & (h <= 0.5 * dpi)
    plausible[0] = False
    if plausible.sum() < 20:
        return None
    glyph = float(np.median(h[plausible]))
    keep = (np.maximum(h, stats[:, 2]) >= 0.3 * glyph) & (stats[:, 4] >= 0.05 * glyph * glyph)
    keep[0] = False
    return keep[labels].astype(np.uint8), glyph


def _fragments(mask: np.ndarray, glyph: float) -> np.ndarray:
    """Boxes (n x 4: x0, y0, x1, y1) of line fragments: glyphs a word space apart joined."""
    k = max(3, int(CLOSE_GLYPHS * glyph))
    joined = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, 1)))
    count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    s = stats[1:count]
    return np.stack([s[:, 0], s[:, 1], s[:, 0] + s[:, 2], s[:, 1] + s[:, 3]], axis=1)


def _gutters(frags: np.ndarray, width: int, glyph: float) -> list[tuple[int, int]]:
    """x-intervals almost no fragment covers, with a column of prose on each side.

    "Almost no": at most GUTTER_SHARE of the fragments on the quieter side
    (a headline or a centred footer may cross a gutter; a column holding only a picture and its
    caption has two fragments, so beside it the gutter must be empty).
    """
    profile = np.zeros(width + 1, np.int32)
    np.add.at(profile, frags[:, 0], 1)
    np.add.at(profile, frags[:, 2], -1)
    profile = np.cumsum(profile)[:width]
    left, right = int(frags[:, 0].min()), int(frags[:, 2].max())
    if right - left < 2 * MIN_COLUMN * glyph:
        return []
    reach = int(MIN_COLUMN * glyph)
    padded = np.concatenate([np.zeros(reach, np.int32), profile, np.zeros(reach, np.int32)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, reach)
    left_peak = windows[:width].max(axis=1)  # max over [x - reach, x)
    right_peak = windows[reach + 1 : reach + 1 + width].max(axis=1)  # max over (x, x + reach]
    ceiling = np.floor(GUTTER_SHARE * np.minimum(left_peak, right_peak))
    low = np.flatnonzero(profile[left:right] <= ceiling[left:right]) + left
    runs: list[tuple[int, int]] = []
    for x in low:
        if runs and x == runs[-1][1]:
            runs[-1] = (runs[-1][0], int(x) + 1)
        else:
            runs.append((int(x), int(x) + 1))
    candidates = [r for r in runs if r[1] - r[0] >= MIN_GUTTER * glyph and left < r[0] and r[1] < right]
    # Drop candidates until every column between them holds prose.
    while candidates:
        edges = [left] + [x for r in candidates for x in r] + [right]
        bad = None
        for i in range(len(candidates) + 1):
            a, b = edges[2 * i], edges[2 * i + 1]
            if not _is_column(frags, a, b, glyph):
                bad = i
                break
        if bad is None:
            return candidates
        candidates.pop(min(bad, len(candidates) - 1))
    return []


def _is_column(frags: np.ndarray, a: int, b: int, glyph: float) -> bool:
    """Prose between x=a and x=b: wide enough and several lines (not a column of prices)."""
    inside = frags[(frags[:, 0] >= a) & (frags[:, 2] <= b)]
    if not len(inside):
        return False
    span = int(inside[:, 2].max() - inside[:, 0].min())
    wide = (inside[:, 2] - inside[:, 0]) >= 0.5 * MIN_COLUMN * glyph
    # A picture (as tall as several lines) makes a column too: the one holding a photo and caption.
    picture = bool((wide & (inside[:, 3] - inside[:, 1] >= 4 * glyph)).any())
    return span >= MIN_COLUMN * glyph and (int(wide.sum()) >= MIN_COLUMN_LINES or picture)


@dataclass(frozen=True)
class Ink:
    """The page's glyph-sized ink, measured once for columns and for borderless tables."""

    pictures: list[Box]
    mask: np.ndarray  # glyph-sized ink, pictures and specks out
    glyph: float  # median glyph height in pixels
    fragments: np.ndarray  # n x 4 line fragments (x0, y0, x1, y1)


def measure(ink: np.ndarray, gray: np.ndarray, dpi: int | None) -> Ink | None:
    """Pictures, glyph-sized ink and its line fragments; None on a page without text."""
    res = dpi or 300
    pics = pictures(gray, res)
    found = _glyph_mask(ink, res, pics)
    if found is None:
        return None
    mask, glyph = found
    return Ink(pics, mask, glyph, _fragments(mask, glyph))


def find(measured: Ink | None, shape: tuple[int, int]) -> PageLayout | None:
    """The page's reading regions when it has columns, else None (read it whole)."""
    if measured is None:
        return None
    pics, mask, glyph, frags = measured.pictures, measured.mask, measured.glyph, measured.fragments
    if len(pics):
        frags = np.concatenate([frags, np.array(pics, dtype=frags.dtype)])
    if len(frags) < 2 * MIN_COLUMN_LINES:
        return None
    height, width = shape
    # Stripes separated by white across the page, each with its own gutters; consecutive stripes
    # with the same gutters are one band (paragraph breaks that happen to line up).
    stripes: list[tuple[int, int, list[tuple[int, int]]]] = []
    for y0, y1 in _white_cuts(frags, BAND_GAP * glyph):
        inside = frags[(frags[:, 1] >= y0) & (frags[:, 3] <= y1)]
        gutters = _gutters(inside, width, glyph)
        if stripes and gutters and _same_gutters(stripes[-1][2], gutters):
            prev = stripes[-1]
            merged = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(prev[2], gutters, strict=True)]
            stripes[-1] = (prev[0], y1, merged)
        else:
            stripes.append((y0, y1, gutters))
    if not any(g for _, _, g in stripes):
        return None
    regions: list[Region] = []
    pad = int(PAD * glyph)
    for i, (y0, y1, gutters) in enumerate(stripes):
        top = max(0, y0 - pad, (stripes[i - 1][1] + y0) // 2 if i else 0)
        bottom = min(height, y1 + pad, (y1 + stripes[i + 1][0]) // 2 if i + 1 < len(stripes) else height)
        inside = frags[(frags[:, 1] >= y0) & (frags[:, 3] <= y1)]
        if not gutters:
            x0, x1 = int(inside[:, 0].min()), int(inside[:, 2].max())
            regions.append(Region((max(0, x0 - pad), top, min(width, x1 + pad), bottom), 0, 0, 1))
            continue
        regions.extend(_regions(inside, gutters, glyph, width, (top, bottom)))
    if not any(r.columns > 1 for r in regions):
        return None
    # Number the bands from the top.
    numbered, band, last = [], -1, None
    for r in regions:
        key = (r.box[1], r.box[3])
        if key != last:
            band, last = band + 1, key
        numbered.append(Region(r.box, band, r.column, r.columns))
    return PageLayout(numbered, pics, glyph, drop_caps(mask, glyph))


def _same_gutters(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> bool:
    pairs = zip(a, b, strict=False)
    return len(a) == len(b) and all(min(x1, y1) > max(x0, y0) for (x0, x1), (y0, y1) in pairs)


def _white_cuts(frags: np.ndarray, gap: float) -> list[tuple[int, int]]:
    """y-ranges of ink separated by at least `gap` rows that no fragment touches."""
    order = np.argsort(frags[:, 1], kind="stable")
    out: list[list[int]] = []
    for i in order:
        y0, y1 = int(frags[i, 1]), int(frags[i, 3])
        if out and y0 - out[-1][1] < gap:
            out[-1][1] = max(out[-1][1], y1)
        else:
            out.append([y0, y1])
    return [(a, b) for a, b in out]


def _regions(
    frags: np.ndarray, gutters: list[tuple[int, int]], glyph: float, width: int, limits: tuple[int, int]
) -> list[Region]:
    """Regions of one stripe with gutters: full-width parts whole, column parts column by column."""
    left, right = int(frags[:, 0].min()), int(frags[:, 2].max())
    # A fragment spanning a gutter from side to side is full-width (headline, footer, paragraph).
    crosses = np.zeros(len(frags), bool)
    for a, b in gutters:
        crosses |= (frags[:, 0] < a) & (frags[:, 2] > b)
    bands = _bands(frags, crosses, glyph)
    bounds = [left] + [(a + b) // 2 for a, b in gutters] + [right]
    pad = int(PAD * glyph)
    out: list[Region] = []
    tops = [lo for lo, _, _ in bands]
    bottoms = [hi for _, hi, _ in bands]
    for i, (y0, y1, full) in enumerate(bands):
        # Pad, but never into the neighbouring band.
        top = max(limits[0], y0 - pad, (bottoms[i - 1] + y0) // 2 if i else 0)
        bottom = min(limits[1], y1 + pad, (y1 + tops[i + 1]) // 2 if i + 1 < len(bands) else limits[1])
        band = frags[(frags[:, 1] >= y0) & (frags[:, 3] <= y1)]
        centre = (band[:, 0] + band[:, 2]) / 2
        used = []
        multi_line = 0
        for c in range(len(bounds) - 1):
            mine = band[(centre >= bounds[c]) & (centre < bounds[c + 1] + 1)]
            if len(mine):
                used.append(c)
                multi_line += bool((mine[:, 1] >= mine[:, 3].min()).any())
        # One line across the columns (a headline's words) reads the same whole.
        if full or len(used) < 2 or multi_line == 0:
            out.append(Region((max(0, left - pad), top, min(width, right + pad), bottom), i, 0, 1))
            continue
        for c in used:
            x0 = max(0, bounds[c] - (pad if c == 0 else 0))
            x1 = min(width, bounds[c + 1] + (pad if c == len(bounds) - 2 else 0))
            out.append(Region((x0, top, x1, bottom), i, c, len(used)))
    return out


def _bands(frags: np.ndarray, crosses: np.ndarray, glyph: float) -> list[tuple[int, int, bool]]:
    """(top, bottom, full-width) bands: runs of crossing fragments, and the rest between them
    cut where white spans the whole text width for BAND_GAP glyph heights."""
    order = np.argsort(frags[:, 1], kind="stable")
    bands: list[list[int]] = []  # [top, bottom, full]
    gap = BAND_GAP * glyph
    for i in order:
        y0, y1, full = int(frags[i, 1]), int(frags[i, 3]), bool(crosses[i])
        if bands:
            last = bands[-1]
            overlaps = y0 < last[1]
            if overlaps and full and not last[2]:
                # A full-width fragment overlapping a column band (a drop cap beside a headline):
                # the band becomes full-width from there; keep it simple, merge.
                last[1] = max(last[1], y1)
                last[2] = 1
                continue
            if overlaps or (bool(last[2]) == full and y0 - last[1] < (glyph if full else gap)):
                last[1] = max(last[1], y1)
                continue
        bands.append([y0, y1, int(full)])
    return [(a, b, bool(f)) for a, b, f in bands]
