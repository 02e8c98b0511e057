"""Pages scanned sideways or upside down: detect, turn, recognise again.

Measured on generated pages (docs/local-engine.md): Tesseract OSD costs ~0.35 s on a letter page
at 300 dpi, about half of a recognition pass, and is right at 0/90/180/270 with confidence ~40 at
300 dpi (~9-25 at 150 dpi). An upright page recognises at mean word confidence ~95, an upside-down
or wrongly turned one at ~30. So OSD runs only when the first pass looks wrong (low confidence or
a non-upright layout), and the turned result is kept only if it reads better.
"""

from __future__ import annotations

from PIL import Image

from pipeline.backends.local.engine import Engine, Recognition

SUSPECT_CONFIDENCE = 60.0  # below this mean word confidence, check the orientation
MIN_OSD_CONFIDENCE = 1.5  # OSD answers below this are guesses
MIN_CHARS = 20  # with less text there is nothing to judge by


def suspicious(rec: Recognition) -> bool:
    """Does the first pass look like a page read at the wrong orientation?"""
    if not rec.upright:
        return True
    if rec.chars < MIN_CHARS:
        return rec.chars > 0  # a few garbage characters: maybe rotated sparse text
    return rec.confidence is not None and rec.confidence < SUSPECT_CONFIDENCE


def turn(image: Image.Image, degrees: int) -> Image.Image:
    """Turn counter-clockwise by `degrees` (0/90/180/270) without resampling."""
    ops = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    return image.transpose(ops[degrees]) if degrees in ops else image


def recognize_upright(engine: Engine, image: Image.Image, dpi: int | None) -> tuple[Recognition, int]:
    """Recognise the page the right way up; return the result and the rotation applied.

    The rotation is in degrees counter-clockwise applied to the image before recognition
    (0, 90, 180 or 270): a page scanned 90° clockwise comes back with rotation 90.
    """
    first = engine.recognize(image, dpi)
    if not suspicious(first):
        return first, 0
    osd = engine.detect_orientation(image, dpi)
    candidates: list[int] = []
    if osd is not None and osd[0] % 360 and osd[1] >= MIN_OSD_CONFIDENCE:
        candidates.append(osd[0] % 360)
    elif osd is None or osd[0] % 360:
        # OSD could not decide: fall back to trying the other orientations by confidence.
        candidates = [180, 90, 270]
    best, best_rotation = first, 0
    for degrees in candidates:
        rec = engine.recognize(turn(image, degrees), dpi)
        if _score(rec) > _score(best):
            best, best_rotation = rec, degrees
        if not suspicious(best):
            break
    return best, best_rotation


def _score(rec: Recognition) -> float:
    # Upright text reads with higher confidence; an upright page also has its layout PAGE_UP.
    conf = rec.confidence or 0.0
    return conf + (5.0 if rec.upright else 0.0)
