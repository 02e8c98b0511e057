"""Tesseract through tesserocr: one engine per worker process, page structure out.

The tesserocr wheel bundles a libtesseract built without OpenMP, so parallelism comes from
processes; each process keeps one initialised PyTessBaseAPI (init costs ~0.1 s and the model's
memory) and reuses it for every page.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps
from tesserocr import OEM, PSM, RIL, PyTessBaseAPI

from pipeline.backends.local import columns, ink, regions, rules, tables
from pipeline.backends.local.layout import Block, Box, Line, Paragraph, Word

# Tesseract PolyBlockType values that hold no text (images, rules, noise).
_NON_TEXT_BLOCKS = {9, 10, 11, 12, 13, 14}
# Orientation() of a block: (orientation, writing direction, line order, deskew angle).
# Orientation 0 is PAGE_UP; writing direction 2 is TOP_TO_BOTTOM, which is what Tesseract reports
# when it reads a sideways page by itself (measured): its boxes are then in turned coordinates.
PAGE_UP = 0
TOP_TO_BOTTOM = 2


@dataclass
class Recognition:
    blocks: list[Block]
    confidence: float | None  # mean word confidence 0-100 weighted by characters; None if no text
    chars: int  # recognised non-space characters
    upright: bool  # the first text block is PAGE_UP with horizontal lines
    unread: int = 0  # glyphs of ink that no reading turned into text (they lower the confidence)


class Engine:
    """An initialised Tesseract for one process: `recognize()` an image, `detect_orientation()`."""

    def __init__(self, tessdata: Path, language: str) -> None:
        self.tessdata = tessdata
        self.language = language
        self.api = PyTessBaseAPI(path=str(tessdata), lang=language, psm=PSM.AUTO, oem=OEM.DEFAULT)
        self._osd: PyTessBaseAPI | None = None

    def close(self) -> None:
        self.api.End()
        if self._osd is not None:
            self._osd.End()

    def recognize(self, image: Image.Image, dpi: int | None) -> Recognition:
        """Read the page: rules erased, unread ink read again, ruled grids as tables, regions ordered."""
        api = self.api
        prepared = rules.prepare(image, dpi)
        # Columns from the white space, before Tesseract can merge lines across a gutter.
        gray = np.asarray(image.convert("L"))
        measured = None if prepared.grids else columns.measure(prepared.ink, gray, dpi)
        page = columns.find(measured, prepared.ink.shape)
        caps = self._read_drop_caps(prepared, page.drop_caps, dpi) if page else []
        slope = functools.cache(lambda: ink.skew(prepared.ink))  # most pages never need it
        # Borderless tables are read cell by cell below; Tesseract reads the rest of the page.
        borderless = [] if page is not None else tables.find(measured, slope)
        # Ruled grids too: Tesseract's page read misreads their small type (`3L5`, `w cS) BR`).
        borderless += [tables.from_grid(g, prepared.ink) for g in prepared.grids]
        text = _without(prepared, borderless)
        api.SetPageSegMode(PSM.AUTO)
        api.SetImage(text.image)
        # Rendered pages carry no resolution: tell Tesseract. 0 lets it estimate from the text.
        api.SetVariable("user_defined_dpi", str(dpi or 0))
        if page is None:
            api.Recognize()
            rec = _structure(api)
        else:
            rec = self._read_regions(page.regions)
            regions.put_drop_caps(rec.blocks, caps)
        if rec.upright:
            self._read_unread(rec, _off_pictures(text, page), dpi)
            self._reread_amounts(_outside(rec.blocks, prepared.grids), prepared.image, slope, dpi)
            regions.attach_numbers(rec.blocks, slope)
        blocks = rec.blocks
        if borderless and rec.upright:
            # A ruled cell is a short line boxed by straight rules: no tilt to undo (and no need
            # to measure it).
            texts = [self._read_cells(prepared.image, t, 0.0 if t.ruled else slope(), dpi, rec)
                     for t in borderless]
            blocks = regions.tables_from_cells(blocks, borderless, texts)
        if page is not None:
            regions.place(blocks, page.regions)
        rec.blocks = regions.arrange(blocks, image.width, image.height, page.pictures if page else [])
        return rec

    def _read_drop_caps(self, prepared: rules.Prepared, boxes: list[Box], dpi: int | None) -> list[Word]:
        """Each drop cap read alone as one character, then painted out of the page to read."""
        if not boxes:
            return []
        caps = []
        self.api.SetPageSegMode(PSM.SINGLE_CHAR)
        for box in boxes:
            crop = ImageOps.expand(prepared.image.crop(box).convert("L"), REGION_MARGIN, fill=255)
            self.api.SetImage(crop)
            self.api.SetVariable("user_defined_dpi", str(dpi or 0))
            text = (self.api.GetUTF8Text() or "").strip()
            if len(text) == 1 and text.isalpha():
                caps.append(Word(text.upper(), box, float(self.api.MeanTextConf())))
        arr = np.array(prepared.image)
        for x0, y0, x1, y1 in (w.box for w in caps):
            arr[y0:y1, x0:x1] = 255
        image = Image.fromarray(arr)
        image.info = dict(prepared.image.info)
        prepared.image = image
        return caps

    def _read_regions(self, parts: list[columns.Region]) -> Recognition:
        """Each region of the page read on its own (the image is already set), in reading order."""
        blocks: list[Block] = []
        conf_sum, chars, upright = 0.0, 0, None
        for part in parts:
            x0, y0, x1, y1 = part.box
            self.api.SetRectangle(x0, y0, x1 - x0, y1 - y0)
            self.api.Recognize()
            got = _structure(self.api)
            for block in got.blocks:
                block.band, block.column = part.band, part.column
            blocks.extend(got.blocks)
            conf_sum += (got.confidence or 0.0) * got.chars
            chars += got.chars
            if got.chars and upright is None:
                upright = got.upright
        return Recognition(blocks, conf_sum / chars if chars else None, chars, upright is not False)

    def _read_unread(self, rec: Recognition, prepared: rules.Prepared, dpi: int | None) -> None:
        """Read again, one block at a time, the ink the page segmentation left out.

        Confidence then covers what was not read either: each glyph left unread counts as a
        character read at confidence 0.
        """
        words = [w.box for b in rec.blocks for p in b.paragraphs for line in p.lines for w in line.words]
        line_h = _line_height(rec.blocks) or (dpi or 300) * 14 / 72
        found = ink.unread_regions(prepared.ink, words, line_h)
        conf_sum = (rec.confidence or 0.0) * rec.chars
        unread = 0
        if len(found) > ink.MAX_REGIONS:
            unread = sum(r.glyphs for r in found)
            found = []
        slope = regions.skew(rec.blocks, line_h)
        for region in found:
            lines = self._read_region(prepared.image, region.box, slope, dpi)
            got = sum(len(w.text) for line in lines for w in line.words)
            conf_sum += sum((w.conf or 0) * len(w.text) for line in lines for w in line.words)
            rec.chars += got
            unread += max(0, region.glyphs - got)
            regions.merge_lines(rec.blocks, lines, slope)
        if found:
            self.api.SetPageSegMode(PSM.AUTO)
        rec.unread = unread
        total = rec.chars + unread
        rec.confidence = conf_sum / total if total and rec.chars else rec.confidence

    def _read_cells(
        self, image: Image.Image, table: tables.Table, slope: float, dpi: int | None, rec: Recognition
    ) -> list[list[str]]:
        """Each cell of a borderless table read on its own as one line of text; the readings
        count in the page's confidence."""
        pad = max(2, int(0.3 * table.glyph))
        gray = image.convert("L")
        conf_sum = (rec.confidence or 0.0) * rec.chars
        self.api.SetPageSegMode(PSM.SINGLE_LINE)
        out = []
        for row in table.cells:
            texts = []
            for box in row:
                conf, text = 0.0, ""
                if box is not None:
                    crop = gray.crop((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad))
                    conf, text = self._read_cell(crop, slope, dpi)
                texts.append(text)
                chars = len(text.replace(" ", ""))
                conf_sum += conf * chars
                rec.chars += chars
            out.append(texts)
        self.api.SetPageSegMode(PSM.AUTO)
        rec.confidence = conf_sum / rec.chars if rec.chars else rec.confidence
        return out

    def _reread_amounts(
        self, blocks: list[Block], image: Image.Image, slope: Callable[[], float], dpi: int | None
    ) -> None:
        """The amounts of a right-aligned column read again from their own crop, enlarged.

        A misfit (`TAL` for `1.17`, `1253` for `12.53`) takes the first reading that fits the
        column. An amount that fits already changes only when two readings at different scales
        agree on another value that fits, both surer than the page's reading (`4` for a thin `1`
        on a ToC read at confidence 62, again at 96; one enlarged reading alone turned a right
        `7.95` into `1.95`, and two agreeing ones a `50` read at 97 into `90` at 68-77).
        """
        column, dominant = regions.right_column(blocks)
        if not column:
            return
        gray = image.convert("L")
        self.api.SetPageSegMode(PSM.SINGLE_LINE)
        for word in column:
            if regions.fits(word.text, dominant) and (word.conf or 0) >= SURE_ENOUGH:
                continue  # read well on the page (the misreads fixed here were read at 60-65)
            x0, y0, x1, y1 = word.box
            pad = max(2, int(0.3 * (y1 - y0)))
            crop = gray.crop((x0 - 3 * pad, y0 - pad, x1 + pad, y1 + pad))  # the box may have lost a glyph
            # Small type is read enlarged first; the second reading is at the other size.
            scale, other = (CELL_SCALE, 1) if y1 - y0 < SMALL_GLYPH else (1, CELL_SCALE)
            first = self._read_line(crop, slope(), scale, dpi, smooth=True)
            if not regions.fits(word.text, dominant):
                if regions.fits(first, dominant):
                    word.text = first
                continue
            if first != word.text and regions.fits(first, dominant):
                sure = self.api.MeanTextConf()
                second = self._read_line(crop, slope(), other, dpi, smooth=True)
                sure = min(sure, self.api.MeanTextConf())
                if second == first and sure > (word.conf or 0):
                    word.text = first
        self.api.SetPageSegMode(PSM.AUTO)

    def _read_line(
        self, crop: Image.Image, slope: float, scale: int, dpi: int | None, smooth: bool = False
    ) -> str:
        """One line of text from its crop: enlarged `scale` times, Otsu, the tilt undone.

        `smooth` blurs the crop (half a scan pixel) before Otsu: on a noisy scan the specks
        Otsu keeps close a `5`'s open bowl, and a receipt's `25.53` was read `29.93` at both
        sizes (measured: smoothed, `25.53` at 94-96).
        """
        if scale != 1:
            crop = crop.resize((crop.width * scale, crop.height * scale), Image.Resampling.LANCZOS)
        pixels = np.asarray(crop)
        if smooth:
            pixels = cv2.GaussianBlur(pixels, (0, 0), SMOOTH_SIGMA * scale)
        _, binary = cv2.threshold(pixels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        crop = Image.fromarray(binary)
        angle = math.degrees(math.atan(slope))
        if abs(angle) >= 0.5:
            crop = crop.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=255)
        self.api.SetImage(ImageOps.expand(crop, REGION_MARGIN, fill=255))
        self.api.SetVariable("user_defined_dpi", str((dpi or 300) * scale))
        return " ".join((self.api.GetUTF8Text() or "").split())

    def _read_cell(self, crop: Image.Image, slope: float, dpi: int | None) -> tuple[float, str]:
        """A cell read at its own size, and enlarged unless that was sure: the surer reading.

        Measured on generated 200 dpi pages: points and commas lost at their size (`46` for
        `4.6`, at confidence 78-94) are read enlarged (95-96); a clean 300 dpi cell reads worse
        enlarged (`2./5`), and at its size at 96.
        """
        best = (-1.0, "")
        for scale in (1, CELL_SCALE):
            text = self._read_line(crop, slope, scale, dpi)
            best = max(best, (float(self.api.MeanTextConf()), text))
            if best[0] >= SURE:
                break
        return best

    def _read_region(
        self, image: Image.Image, box: tuple[int, int, int, int], slope: float, dpi: int | None
    ) -> list[Line]:
        """One region as a single block of text: thresholded on its own, straightened, bordered.

        Tesseract's own thresholding of a small crop of tinted, noisy paper misreads clear digits
        (`31.85` as `pe Bi` on the receipt, measured); Otsu on the crop alone, the page's skew
        undone and a white margin read every amount.
        """
        x0, y0, x1, y1 = box
        gray = np.asarray(image.crop(box).convert("L"))
        _, binary = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        crop = Image.fromarray(binary)
        angle = math.degrees(math.atan(slope))
        if abs(angle) >= 0.5:
            crop = crop.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=255)
        margin = REGION_MARGIN
        crop = ImageOps.expand(crop, margin, fill=255)
        x0, y0 = x0 - margin, y0 - margin
        self.api.SetPageSegMode(PSM.SINGLE_BLOCK)
        self.api.SetImage(crop)
        self.api.SetVariable("user_defined_dpi", str(dpi or 0))
        self.api.Recognize()
        lines = _read_region_words(self.api)
        for line in lines:
            line.box = (line.box[0] + x0, line.box[1] + y0, line.box[2] + x0, line.box[3] + y0)
            for w in line.words:
                w.box = (w.box[0] + x0, w.box[1] + y0, w.box[2] + x0, w.box[3] + y0)
        return lines

    def detect_orientation(self, image: Image.Image, dpi: int | None) -> tuple[int, float] | None:
        """Tesseract OSD: degrees the content is turned clockwise, and its confidence.

        OSD runs on its own API initialised with `osd` and PSM.OSD_ONLY: calling it on the
        recognition API aborts the whole process inside libtesseract (measured).
        """
        if not (self.tessdata / "osd.traineddata").is_file():
            return None
        if self._osd is None:
            self._osd = PyTessBaseAPI(path=str(self.tessdata), lang="osd", psm=PSM.OSD_ONLY)
        self._osd.SetImage(image)
        self._osd.SetVariable("user_defined_dpi", str(dpi or 0))
        try:
            result = self._osd.DetectOrientationScript()
        except RuntimeError:
            return None  # too little text to decide
        if not result:
            return None
        return int(result["orient_deg"]), float(result["orient_conf"])


def _without(prepared: rules.Prepared, found: list[tables.Table]) -> rules.Prepared:
    """The page with the borderless tables painted out, image and ink (nothing left to read)."""
    if not found:
        return prepared
    arr = np.array(prepared.image)
    mask = prepared.ink.copy()
    for t in found:
        pad = 0 if t.ruled else int(t.glyph)  # a ruled grid's text is inside its rules
        x0, y0, x1, y1 = max(0, t.box[0] - pad), max(0, t.box[1] - pad), t.box[2] + pad, t.box[3] + pad
        arr[y0:y1, x0:x1] = 255
        mask[y0:y1, x0:x1] = False
    image = Image.fromarray(arr)
    image.info = dict(prepared.image.info)
    return rules.Prepared(image, mask, prepared.grids, prepared.rules)


def _off_pictures(prepared: rules.Prepared, page: columns.PageLayout | None) -> rules.Prepared:
    """The page's ink without its photos (a glyph's height around them): the local threshold
    leaves a band of ink along a photo's border, whose broken pieces are no unread text (read
    again, they gave `ap` and `Bi` in the line beside the photo)."""
    if page is None or not page.pictures:
        return prepared
    mask = prepared.ink.copy()
    pad = int(page.glyph)
    for x0, y0, x1, y1 in page.pictures:
        mask[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = False
    return rules.Prepared(prepared.image, mask, prepared.grids, prepared.rules)


def _outside(blocks: list[Block], grids: list[rules.Grid]) -> list[Block]:
    """The blocks, without those inside a ruled grid (its cells are no column of amounts)."""
    if not grids:
        return blocks
    return [b for b in blocks if b.box is None or not any(
        g.box[0] <= b.box[0] and b.box[2] <= g.box[2] and g.box[1] <= b.box[1] and b.box[3] <= g.box[3]
        for g in grids)]


SURE = 95  # a reading at this confidence is not tried again enlarged
SURE_ENOUGH = 90  # an amount read on the page at this confidence is not read again
CELL_SCALE = 2  # enlargement for a cell or an amount read again
SMOOTH_SIGMA = 0.5  # blur (scan pixels) before an amount read again is thresholded
SMALL_GLYPH = 32  # amounts in type smaller than this (pixels) are read again enlarged
REGION_MARGIN = 20  # white pixels around a region read on its own
MIN_RECOVERED_CONF = 40.0  # words read from leftover ink below this are noise read as letters
# ... and a word without a digit below this: the pass is there for lone numbers (page numbers,
# prices); letters it finds are mostly specks (`EP` at 43 on a noisy prose scan). On 90 generated
# layout pages, 1 of 25 recovered words had no digit, read at 92.
MIN_RECOVERED_LETTERS_CONF = 60.0


def _read_region_words(api: PyTessBaseAPI) -> list[Line]:
    again = _structure(api)
    lines = []
    for line in (line for b in again.blocks for p in b.paragraphs for line in p.lines):
        line.words = [w for w in line.words if (w.conf or 0) >= _recovered_floor(w.text)]
        if line.words:
            lines.append(line)
    return lines


def _recovered_floor(text: str) -> float:
    """The confidence a word read from leftover ink needs to be kept."""
    return MIN_RECOVERED_CONF if any(c.isdigit() for c in text) else MIN_RECOVERED_LETTERS_CONF


def _line_height(blocks: list[Block]) -> float:
    heights = sorted(
        line.box[3] - line.box[1] for b in blocks for p in b.paragraphs for line in p.lines if line.words
    )
    return float(heights[len(heights) // 2]) if heights else 0.0


def _structure(api: PyTessBaseAPI) -> Recognition:
    blocks: list[Block] = []
    it = api.GetIterator()
    total_conf = 0.0
    chars = 0
    upright: bool | None = None
    # A page with nothing on it gives an empty iterator; touching it further aborts the process.
    if it is None or it.Empty(RIL.BLOCK):
        return Recognition([], None, 0, True)
    skip_block = False
    line: Line | None = None
    while True:
        if it.IsAtBeginningOf(RIL.BLOCK):
            skip_block = it.BlockType() in _NON_TEXT_BLOCKS
            if not skip_block:
                blocks.append(Block())
                if upright is None:
                    orient = it.Orientation()
                    upright = int(orient[0]) == PAGE_UP and int(orient[1]) != TOP_TO_BOTTOM
        if not skip_block:
            if not blocks:
                blocks.append(Block())
            block = blocks[-1]
            if it.IsAtBeginningOf(RIL.PARA) or not block.paragraphs:
                block.paragraphs.append(Paragraph())
            if it.IsAtBeginningOf(RIL.TEXTLINE) or line is None or not block.paragraphs[-1].lines:
                box = it.BoundingBox(RIL.TEXTLINE) or (0, 0, 0, 0)
                attrs = it.RowAttributes() or {}
                size = float(attrs.get("row_height") or (box[3] - box[1]))
                line = Line([], tuple(box), size)  # type: ignore[arg-type]
                block.paragraphs[-1].lines.append(line)
            text = (it.GetUTF8Text(RIL.WORD) or "").strip()
            if text:
                conf = float(it.Confidence(RIL.WORD))
                wbox = it.BoundingBox(RIL.WORD) or line.box
                line.words.append(Word(text, tuple(wbox), conf))  # type: ignore[arg-type]
                n = len(text)
                total_conf += conf * n
                chars += n
        if not it.Next(RIL.WORD):
            break
    return Recognition(blocks, (total_conf / chars) if chars else None, chars, upright is not False)
