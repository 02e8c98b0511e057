"""TIFF and BigTIFF: the one module that reads a TIFF's frames, each with its own resolution.

A TIFF of many frames is a paged document; the OCR services take PNG and JPEG, not TIFF. So the
split stage turns every frame into a PNG page of its own (`frames_as_png`), and the local engine
counts and decodes frames through the same functions (`frame_count`, `frame_dpi`). Each frame
keeps the resolution written in its own header (frames of one file may differ), carried into the
PNG's pHYs chunk, so the engine and the page's `dimensions.dpi` see the scan's true resolution.
Frames are decoded one at a time; a frame of more than `max_pixels` is refused before it is decoded.

Pillow reads classic TIFF and little-endian BigTIFF but cannot identify a big-endian BigTIFF
(`MM\\0+`, checked with Pillow 13.0); those files are read with tifffile, which reads every TIFF
variant, and give the same frames (8-bit L or RGB, each with its own dpi).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, TiffImagePlugin, UnidentifiedImageError

from pipeline.errors import InputError, TooLargeError
from pipeline.reasons import exception_text

if TYPE_CHECKING:
    import numpy as np

MAX_PIXELS = 200_000_000
_INCH, _CENTIMETER = 2, 3
_BIG_ENDIAN_BIGTIFF = b"MM\x00+"
# What tifffile raises on a damaged or unusual file, besides its TiffFileError (a ValueError).
_TIFFFILE_ERRORS = (
    OSError, ValueError, EOFError, IndexError, KeyError, TypeError, NotImplementedError,
    struct.error,
)


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
    return _dpi(xres, tags.get(TiffImagePlugin.Y_RESOLUTION, xres),
                tags.get(TiffImagePlugin.RESOLUTION_UNIT, _INCH))


def _dpi(xres: Any, yres: Any, unit: Any) -> tuple[float, float] | None:
    """Dots per inch from the resolution tags' values; None without a usable resolution."""
    try:
        x, y = float(xres), float(yres)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (x > 0 and y > 0) or unit not in (_INCH, _CENTIMETER):
        return None
    scale = 2.54 if unit == _CENTIMETER else 1.0
    return x * scale, y * scale


def check_frame_size(img: Image.Image, rel: str, index: int, max_pixels: int) -> None:
    _check_size(img.size, rel, index, max_pixels)


def _check_size(size: tuple[int, int], rel: str, index: int, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise TooLargeError(
            f"{rel}: frame {index + 1} is {width}x{height} pixels, above {max_pixels:,}",
            hint="downscale the scan; a frame this size is likely a decompression bomb",
        )


def frames(data: bytes, rel: str, max_pixels: int = MAX_PIXELS) -> Iterator[Frame]:
    """Every frame in order, each checked against `max_pixels` before it is decoded.

    One frame is in memory at a time: a frame's image is valid until the next one is read.
    """
    if data.startswith(_BIG_ENDIAN_BIGTIFF):
        yield from _tifffile_frames(data, rel, max_pixels)
        return
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


def count_frames(path: Path) -> int:
    """Frames (pages) of a TIFF file; only the frame directories are read."""
    with path.open("rb") as fh:
        if fh.read(4) == _BIG_ENDIAN_BIGTIFF:
            import tifffile  # numpy and tifffile only for the files that need them: ~14 MiB

            fh.seek(0)
            with tifffile.TiffFile(fh) as tf:
                return max(1, len(tf.pages))
    with Image.open(path) as image:
        return frame_count(image)


def _tifffile_frames(data: bytes, rel: str, max_pixels: int) -> Iterator[Frame]:
    """The frames of a TIFF Pillow cannot open, read with tifffile one at a time."""
    import tifffile  # imported here: numpy and tifffile cost every run ~14 MiB otherwise

    try:
        tf = tifffile.TiffFile(io.BytesIO(data))
    except _TIFFFILE_ERRORS as exc:
        raise _undecodable(rel, exc) from None
    with tf:
        try:
            count = len(tf.pages)
        except _TIFFFILE_ERRORS as exc:
            raise _undecodable(rel, exc) from None
        for index in range(count):
            try:
                page = tf.pages[index]
                _check_size((page.imagewidth, page.imagelength), rel, index, max_pixels)
                image = _as_image(page.asarray(), page)
            except _TIFFFILE_ERRORS as exc:
                raise _undecodable(rel, exc) from None
            yield Frame(index, image, _page_dpi(page))


def _page_dpi(page: Any) -> tuple[float, float] | None:
    """A tifffile page's resolution in dots per inch, read from its tags as for Pillow's frames."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    xres = _rational(tags["XResolution"].value)
    yres = _rational(tags["YResolution"].value) if "YResolution" in tags else xres
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else _INCH
    return _dpi(xres, yres, unit)


def _rational(value: Any) -> float:
    numerator, denominator = value
    return numerator / denominator


def _as_image(array: np.ndarray, page: Any) -> Image.Image:
    """An 8-bit L or RGB image from a decoded page: palette applied, white-is-zero inverted,
    wide samples scaled by their range, alpha flattened onto white, CMYK converted."""
    import numpy as np

    photometric = int(page.photometric)
    if array.ndim == 3 and int(page.planarconfig) == 2 and array.shape[0] == page.samplesperpixel:
        array = np.moveaxis(array, 0, -1)  # stored plane by plane: samples last
    if photometric == 3 and page.colormap is not None:  # palette: indices into a 16-bit colormap
        rgb = (np.asarray(page.colormap)[:, array] >> 8).astype(np.uint8)
        return Image.fromarray(np.moveaxis(rgb, 0, -1), "RGB")
    array = _to_8bit(array)
    if array.ndim == 2:
        return Image.fromarray(255 - array if photometric == 0 else array, "L")
    samples = array.shape[-1]
    if photometric == 5 and samples >= 4:  # separated: CMYK
        return Image.fromarray(np.ascontiguousarray(array[..., :4]), "CMYK").convert("RGB")
    if samples == 1:
        return Image.fromarray(np.ascontiguousarray(array[..., 0]), "L")
    if samples == 2:  # grey and alpha
        return _flatten(Image.fromarray(np.ascontiguousarray(array), "LA"))
    if samples >= 4:
        return _flatten(Image.fromarray(np.ascontiguousarray(array[..., :4]), "RGBA"))
    return Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB")


def _to_8bit(array: np.ndarray) -> np.ndarray:
    import numpy as np

    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    wide = array.astype(np.float64)
    lo, hi = float(wide.min()), float(wide.max())
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return ((wide - lo) * scale).clip(0, 255).astype(np.uint8)


def _flatten(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


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
