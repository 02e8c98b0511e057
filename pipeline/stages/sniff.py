"""Tell a file's type from its first bytes, never from its name."""

from __future__ import annotations

PDF = "application/pdf"

SUPPORTED = (
    PDF,
    "image/png",
    "image/jpeg",
    "image/tiff",
    "image/webp",
    "image/gif",
    "image/bmp",
)

SNIFF_BYTES = 1024
_DIB_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
# Classic TIFF (42 = "*") and BigTIFF (43 = "+", 64-bit offsets), little- and big-endian.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def sniff(head: bytes) -> str | None:
    """Return the media type for these leading bytes, or None when it is no supported type."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(_TIFF_MAGIC):
        return "image/tiff"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    # "BM" alone is too common in text; require a known DIB header size after the file header.
    if (head.startswith(b"BM") and len(head) >= 18
            and int.from_bytes(head[14:18], "little") in _DIB_HEADER_SIZES):
        return "image/bmp"
    # PDF readers accept a header anywhere in the first 1024 bytes (after junk such as a BOM).
    if b"%PDF-" in head[:SNIFF_BYTES]:
        return PDF
    return None
