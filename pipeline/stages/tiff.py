"""TIFF and BigTIFF: the one module that reads a TIFF's frames, each with its own resolution.

A TIFF of many frames is a paged document; the OCR services take PNG and JPEG, not TIFF. So the
split stage turns every frame into a PNG page of its own (`frames_as_png`), and the local engine
counts and decodes frames through the same functions (`frame_count`, `frame_dpi`). Each frame
keeps the resolution written in its own header (frames of one file may differ), carried into the
PNG's pHYs chunk, so the engine and the page's `dimensions.dpi` see the scan's true resolution.
Frames are decoded one at a time; a frame of more than `max_pixels` is refused before it is decoded.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, TiffImagePlugin, UnidentifiedImageError

from pipeline.errors import InputError, TooLargeError
from pipeline.reasons import exception_text

MAX_PIXELS = 200_000_000
_INCH, _CENTIMETER = 2, 3


@dataclass(frozen=True)
class Frame:
    """One decoded frame: an 8-bit image Pillow can save as PNG, and its resolution if known."""

    index: int
    image: Image.Image
    dpi: tuple[float, float] | None


def frame_count(img: Image.Image) -> int:
    """Frames (pages) in an opened TIFF."""
    return max(1, int(getattr(img, "n_frames", 1)))


def frame_dpi(img: Image.Image) -> tuple[float, float] | None:
    """The current frame's resolution in dots per inch, from its own tags.

    Pillow's `info["dpi"]` keeps the value of an earlier frame when a later one has none, so the
    tags are read here. A frame without a resolution, or with unit "none" (an aspect ratio
    only), has no dpi.
    """
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return None
    xres = tags.get(TiffImagePlugin.X_RESOLUTION)
    yres = tags.get(TiffImagePlugin.Y_RESOLUTION, xres)
    unit = tags.get(TiffImagePlugin.RESOLUTION_UNIT, _INCH)
    try:
        x, y = float(xres), float(yres)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (x > 0 and y > 0) or unit not in (_INCH, _CENTIMETER):
        return None
    scale = 2.54 if unit == _CENTIMETER else 1.0
    return x * scale, y * scale


def check_frame_size(img: Image.Image, rel: str, index: int, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise TooLargeError(
            f"{rel}: frame {index + 1} is {width}x{height} pixels, above {max_pixels:,}",
            hint="downscale the scan; a frame this size is likely a decompression bomb",
        )


def frames(data: bytes, rel: str, max_pixels: int = MAX_PIXELS) -> Iterator[Frame]:
    """Every frame in order, each checked against `max_pixels` before it is decoded.

    One frame is in memory at a time: a frame's image is valid until the next one is read.
    """
    try:
        image = Image.open(io.BytesIO(data))
        count = frame_count(image)
    except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError) as exc:
        raise _undecodable(rel, exc) from None
    for index in range(count):
        try:
            image.seek(index)
            check_frame_size(image, rel, index, max_pixels)
            image.load()
            frame = image.convert("RGB") if image.mode not in ("1", "L", "RGB") else image
        except (OSError, ValueError, EOFError, SyntaxError) as exc:
            raise _undecodable(rel, exc) from None
        yield Frame(index, frame, frame_dpi(image))


def _undecodable(rel: str, exc: BaseException) -> InputError:
    return InputError(
        f"{rel}: TIFF cannot be decoded ({exception_text(exc)})", hint="re-export the scan and run again"
    )


def frames_as_png(data: bytes, rel: str, max_pixels: int = MAX_PIXELS) -> Iterator[bytes]:
    """One PNG per frame, carrying the frame's resolution (pHYs) when it has one."""
    for frame in frames(data, rel, max_pixels):
        buf = io.BytesIO()
        extra = {"dpi": frame.dpi} if frame.dpi else {}
        frame.image.save(buf, format="PNG", optimize=False, compress_level=3, **extra)
        yield buf.getvalue()
