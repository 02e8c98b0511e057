"""Tesseract through tesserocr: one engine per worker process, page structure out.

The tesserocr wheel bundles a libtesseract built without OpenMP, so parallelism comes from
processes; each process keeps one initialised PyTessBaseAPI (init costs ~0.1 s and the model's
memory) and reuses it for every page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tesserocr import OEM, PSM, RIL, PyTessBaseAPI

from pipeline.backends.local.layout import Block, Line, Paragraph, Word

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
        api = self.api
        api.SetImage(image)
        # Rendered pages carry no resolution: tell Tesseract. 0 lets it estimate from the text.
        api.SetVariable("user_defined_dpi", str(dpi or 0))
        api.Recognize()
        return _structure(api)

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
