"""Image inputs: safe opening, pixel limits checked from the header, frames, modes.

Pillow reads only the header on `Image.open`, so the size is known before any pixel buffer is
allocated: that is where decompression bombs are stopped. Multi-page TIFFs give one page per
frame, counted and with each frame's resolution read by `pipeline.stages.tiff` (the one owner of
TIFF frames); animated GIF/WebP give their first frame only (an animation is not a paged document).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import InputError, TooLargeError
from pipeline.reasons import exception_text
from pipeline.stages import tiff

PAGED_FORMATS = {"TIFF", "MPO"}  # formats whose frames are pages
_FORMAT_NAMES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/tiff": "TIFF",
    "image/webp": "WebP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
}


def _corrupt(media_type: str, exc: BaseException) -> InputError:
    kind = _FORMAT_NAMES.get(media_type, media_type)
    detail = exception_text(exc)
    return InputError(
        f"cannot decode the {kind} image: {detail}",
        hint="the file is truncated or corrupt: re-export or re-scan it, "
        "or check that its content matches its type",
    )


def too_large(what: str, width: int, height: int, max_pixels: int) -> TooLargeError:
    return TooLargeError(
        f"{what} is {width}x{height} = {width * height:,} pixels, above the limit of "
        f"{max_pixels:,} (local.max_pixels)",
        hint="downscale the image, lower local.dpi, or raise local.max_pixels if the machine "
        "has the memory (about 1 byte per pixel per worker, more during OCR)",
    )


def open_image(data: bytes, media_type: str, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check the pixel count before anything is decoded."""
    if not data:
        raise InputError("the image file is empty", hint="check the source file")
    # Our own limit is the one that applies; Pillow's (a warning, then an error at 2x) would
    # otherwise fire first with a less useful message.
    Image.MAX_IMAGE_PIXELS = None
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InputError(
            f"not a readable image (expected {_FORMAT_NAMES.get(media_type, media_type)})",
            hint="the file is corrupt or not an image: re-export it or exclude it",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise _corrupt(media_type, exc) from exc
    check_pixels(img, max_pixels)
    return img


def check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InputError(f"the image has an invalid size {width}x{height}", hint="re-export it")
    if width * height > max_pixels:
        raise too_large("the image", width, height, max_pixels)


def frame_count(img: Image.Image) -> int:
    """Pages in this image: every frame of a TIFF (or MPO), one for everything else."""
    if img.format == "TIFF":
        return tiff.frame_count(img)
    if img.format in PAGED_FORMATS:
        return max(1, int(getattr(img, "n_frames", 1)))
    return 1


def load_frame(
    img: Image.Image, index: int, media_type: str, max_pixels: int
) -> tuple[Image.Image, int | None]:
    """Decode one frame into an 8-bit greyscale or RGB image; return it and its dpi if known."""
    try:
        if index:
            img.seek(index)
        check_pixels(img, max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
        dpi = _dpi(img)
        img = ImageOps.exif_transpose(img) if img.format == "JPEG" else img
        return _normalise_mode(img), dpi
    except (TooLargeError, InputError):
        raise
    except EOFError as exc:
        raise InputError(f"the image has no frame {index + 1}", hint="the file is truncated") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _corrupt(media_type, exc) from exc


def header_dpi(img: Image.Image) -> int | None:
    """The resolution written in the header of the image's current frame, if any."""
    raw = tiff.frame_dpi(img) if img.format == "TIFF" else img.info.get("dpi")
    try:
        dpi = round(float(raw[0])) if raw else 0
    except (TypeError, ValueError, IndexError):
        dpi = 0
    return dpi if dpi > 0 else None


def _dpi(img: Image.Image) -> int | None:
    dpi = header_dpi(img) or 0
    # 72/96 dpi in a header is usually a default written by software, not a scan resolution,
    # and anything outside Tesseract's range is noise: let Tesseract estimate instead.
    return dpi if 100 <= dpi <= 2400 else None


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Flatten transparency onto white and reduce odd modes (16-bit, CMYK, palette) to L/RGB."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("L", "RGB"):
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # Scale 16/32-bit greyscale to 8 bits by its actual range.
        wide = img if img.mode == "F" else img.convert("I")
        lo, hi = wide.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        return wide.point(lambda v: v * scale - lo * scale).convert("L")
    return img.convert("RGB")
