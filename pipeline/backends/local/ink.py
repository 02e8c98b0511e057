"""Ink the first reading left unread: glyph-sized marks outside every recognised word.

Tesseract's automatic page segmentation can drop a whole column (the receipt's right-aligned
prices, issue 11 point 4) and still report a high confidence, because confidence only covers the
words it kept. Here the page's ink (rules already removed) is compared with the word boxes:
glyph-sized connected components outside them are grouped into line-sized blobs, and the blobs
into regions that can be read again. The number of glyphs is the estimate of characters not read.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]

MAX_GLYPH_LINES = 2.5  # a component taller or wider than this many line heights is no glyph
MIN_GLYPH_LINES = 0.3  # ... and one shorter than this is a dot, a speck or noise
MIN_REGION_GLYPHS = 1  # a lone page number "7" is one glyph
MAX_REGIONS = 40  # past this the page is mostly unread: the caller reads it whole instead


@dataclass
class Region:
    box: Box
    glyphs: int  # connected components of glyph size: roughly the characters in it


def unread_regions(ink: np.ndarray, words: list[Box], line_h: float) -> list[Region]:
    """Regions of glyph-sized ink that no recognised word covers, padded for a second reading."""
    if line_h <= 0:
        return []
    height, width = ink.shape
    rest = ink.astype(np.uint8)
    pad = max(1, int(0.25 * line_h))
    for x0, y0, x1, y1 in words:
        rest[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = 0
    count, labels, stats, _ = cv2.connectedComponentsWithStats(rest, connectivity=8)
    if count <= 1:
        return []
    w, h = stats[:, 2], stats[:, 3]
    keep = (h >= MIN_GLYPH_LINES * line_h) & (h <= MAX_GLYPH_LINES * line_h) & (w <= MAX_GLYPH_LINES * line_h)
    keep &= stats[:, 4] >= 0.08 * h * w  # a glyph fills part of its box; a thin diagonal does not
    keep[0] = False
    if not keep.any():
        return []
    glyphs = keep[labels].astype(np.uint8)
    # Glyphs a word space apart join into one blob per line.
    kw = max(3, int(0.9 * line_h))
    blobs = cv2.dilate(glyphs, cv2.getStructuringElement(cv2.MORPH_RECT, (kw, max(1, int(0.2 * line_h)))))
    n, blab, bstats, _ = cv2.connectedComponentsWithStats(blobs, connectivity=8)
    centres = np.flatnonzero(keep)
    cy = (stats[centres, 1] + stats[centres, 3] // 2).clip(0, height - 1)
    cx = (stats[centres, 0] + stats[centres, 2] // 2).clip(0, width - 1)
    per_blob = np.bincount(blab[cy, cx], minlength=n)
    found = []
    for b in range(1, n):
        if per_blob[b] < MIN_REGION_GLYPHS:
            continue
        x, y, bw, bh, _ = bstats[b]
        found.append(Region((int(x), int(y), int(x + bw), int(y + bh)), int(per_blob[b])))
    return _merge_columns(found, line_h, width, height)


def _merge_columns(blobs: list[Region], line_h: float, width: int, height: int) -> list[Region]:
    """Stack blobs that sit one above the other into one region (a column of prices)."""
    blobs.sort(key=lambda r: (r.box[1], r.box[0]))
    regions: list[Region] = []
    for blob in blobs:
        for reg in regions:
            x0, y0, x1, y1 = reg.box
            overlap = min(x1, blob.box[2]) - max(x0, blob.box[0])
            narrow = min(x1 - x0, blob.box[2] - blob.box[0])
            if overlap > 0.5 * narrow and 0 <= blob.box[1] - y1 <= 1.6 * line_h:
                reg.box = (min(x0, blob.box[0]), y0, max(x1, blob.box[2]), max(y1, blob.box[3]))
                reg.glyphs += blob.glyphs
                break
        else:
            regions.append(Region(blob.box, blob.glyphs))
    pad = int(0.4 * line_h)
    return [
        Region((max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad)), r.glyphs)
        for r in regions
        for x0, y0, x1, y1 in [r.box]
    ]


MAX_SKEW_DEGREES = 3.0
SKEW_STEP_DEGREES = 0.05
SKEW_POINTS = 40_000
SKEW_BIN = 3  # pixels: finer than a line's stroke, coarser than the jitter


def skew(ink: np.ndarray) -> float:
    """The page's tilt as dy/dx from its ink: the slope whose projection profile is sharpest.

    Word boxes give a poor estimate on pages of short lines (a table of contents: descenders
    and capitals move a short line's ends by more than the tilt does); the ink of every line
    together does not. Measured on at most SKEW_POINTS ink pixels.
    """
    ys, xs = np.nonzero(ink)
    if len(ys) < 200:
        return 0.0
    rng = np.random.default_rng(0)
    if len(ys) > SKEW_POINTS:
        pick = rng.choice(len(ys), SKEW_POINTS, replace=False)
        ys, xs = ys[pick], xs[pick]
    # Jitter within a pixel: without it an untilted candidate puts each pixel row in one bin and
    # always scores sharpest (aliasing).
    base = ys + rng.random(len(ys)) + ink.shape[1] * np.tan(np.radians(MAX_SKEW_DEGREES))
    best, best_score = 0.0, -1.0
    for degrees in np.arange(-MAX_SKEW_DEGREES, MAX_SKEW_DEGREES + 1e-9, SKEW_STEP_DEGREES):
        slope = float(np.tan(np.radians(degrees)))
        rows = ((base - slope * xs) // SKEW_BIN).astype(np.int64)
        counts = np.bincount(rows.clip(0))
        score = float(np.dot(counts, counts))
        if score > best_score:
            best, best_score = slope, score
    return best
