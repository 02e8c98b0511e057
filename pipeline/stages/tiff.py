"""Multi-page TIFF: one PNG per frame, so each frame is a page of its own for every backend.

The OCR services take PNG and JPEG images, not TIFF, and a TIFF of many frames is a paged
document. Frames are decoded one at a time; a frame of more than `max_pixels` is refused before
it is decoded.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError

from pipeline.errors import InputError, TooLargeError

MAX_PIXELS = 200_000_000


def tiff_frames_as_png(data: bytes, rel: str, max_pixels: int = MAX_PIXELS) -> Iterator[bytes]:
    try:
        image = Image.open(io.BytesIO(data))
        frames = getattr(image, "n_frames", 1)
        for index in range(frames):
            image.seek(index)
            width, height = image.size
            if width * height > max_pixels:
                raise TooLargeError(
                    f"{rel}: frame {index + 1} is {width}x{height} pixels, above {max_pixels:,}",
                    hint="downscale the scan; a frame this size is likely a decompression bomb",
                )
            frame = image.convert("RGB") if image.mode not in ("1", "L", "RGB") else image
            buf = io.BytesIO()
            frame.save(buf, format="PNG", optimize=False, compress_level=3)
            yield buf.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError) as exc:
        raise InputError(
            f"{rel}: TIFF cannot be decoded ({exc})", hint="re-export the scan and run again"
        ) from None
