"""Bad inputs, each built from scratch by the tests: damaged, encrypted, odd and mislabelled files.

Every builder returns bytes (or makes a special file) and is deterministic. PDFs are written by
hand with `raw_pdf`, which lays out numbered objects, a correct xref table and a trailer, so each
damage is exactly the one named (wrong offsets, no xref, a cycle in the page tree, ...).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import socket
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from tests.pdfgen import pdf_bytes

LETTER_BOX = (0, 0, 612, 792)


# ---- PDFs written object by object ------------------------------------------------------------


def raw_pdf(objects: Sequence[bytes], *, root: int = 1) -> bytes:
    """A PDF whose object N (from 1) is `objects[N-1]`, with a correct xref table and trailer."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, root, xref_at
    )
    return bytes(out)


def _stream(content: bytes) -> bytes:
    return b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"


def _text_content(text: str) -> bytes:
    safe = text.replace("\\", " ").replace("(", " ").replace(")", " ")
    return b"BT /F1 14 Tf 72 700 Td (" + safe.encode("latin-1") + b") Tj ET"


def _box(box: tuple[float, float, float, float]) -> bytes:
    return ("[" + " ".join(f"{v:g}" for v in box) + "]").encode("ascii")


def text_pdf(texts: Sequence[str], *, box: tuple[float, float, float, float] = LETTER_BOX) -> bytes:
    """One page per text, each page with `box` as its MediaBox. Objects: catalog, pages, font,
    then a page and its content stream per text."""
    first_page = 4
    kids = b" ".join(b"%d 0 R" % (first_page + 2 * i) for i in range(len(texts)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % len(texts),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, text in enumerate(texts):
        content_ref = first_page + 2 * i + 1
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox " + _box(box)
            + b" /Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content_ref
        )
        objects.append(_stream(_text_content(text)))
    return raw_pdf(objects)


def zero_page_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty."""
    return raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def cyclic_page_tree_pdf(text: str) -> bytes:
    """One real page, and a page-tree node that lists the root among its kids (2 -> 5 -> 2)."""
    return raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [4 0 R 5 0 R] /Count 2 >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 3 0 R >> >> /Contents 6 0 R >>",
        b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R] /Count 1 >>",
        _stream(_text_content(text)),
    ])


def self_kid_page_tree_pdf() -> bytes:
    """A page tree whose root is its own only kid, and no page at all."""
    return raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>",
    ])


# ---- damage -----------------------------------------------------------------------------------


def truncated_pdf(texts: Sequence[str]) -> bytes:
    """The first part of a PDF, cut before its catalog and page tree: the pages' objects are there
    but nothing says they form a document. Not recoverable."""
    data = pdf_bytes(list(texts))  # reportlab writes the catalog and the page tree after the pages
    cut = data[: data.index(b"/Type /Catalog") - 40]
    assert b"/Catalog" not in cut and b"/Type /Pages" not in cut and b"/Type /Page" in cut
    return cut


def tail_cut_pdf(texts: Sequence[str]) -> bytes:
    """Every object intact, the xref table, trailer and %%EOF cut off: an interrupted copy.
    Recoverable by rebuilding the xref from the objects."""
    data = text_pdf(texts)
    return data[: data.rindex(b"xref")]


def wrong_xref_offsets_pdf(texts: Sequence[str], shift: int = 37) -> bytes:
    """A valid PDF whose every xref offset is off by `shift` bytes. Recoverable."""
    data = text_pdf(texts)
    head, sep, tail = data.rpartition(b"\nxref\n")

    def bump(m: re.Match[bytes]) -> bytes:
        return b"%010d" % (int(m.group(1)) + shift) + m.group(2)

    bent = re.sub(rb"(\d{10})( 00000 n)", bump, tail)
    assert bent != tail
    return head + sep + bent


def no_xref_pdf(texts: Sequence[str]) -> bytes:
    """A valid PDF with its xref table removed (trailer and startxref kept). Recoverable."""
    data = text_pdf(texts)
    start, end = data.rindex(b"xref\n0 "), data.rindex(b"trailer")
    return data[:start] + data[end:]


def encrypted_pdf(
    texts: Sequence[str], *, user_password: str, owner_password: str = "owner-secret",
    algorithm: str = "AES-256",
) -> bytes:
    """A PDF encrypted with pypdf: an empty `user_password` opens without one (owner-only)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(pdf_bytes(list(texts)))).pages:
        writer.add_page(page)
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm=algorithm)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


_PASSWORD_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    box, j = list(range(256)), 0
    for i in range(256):
        j = (j + box[i] + key[i % len(key)]) % 256
        box[i], box[j] = box[j], box[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + box[i]) % 256
        box[i], box[j] = box[j], box[i]
        out.append(byte ^ box[(box[i] + box[j]) % 256])
    return bytes(out)


def encrypted_blank_pdf_without_id(pages: int = 2, owner_password: bytes = b"owner") -> bytes:
    """Pages without content streams (blank in every reader), RC4-40 encrypted with an empty user
    password and no /ID in the trailer: its key was derived from an empty ID, as some writers do.
    qpdf opens it with a warning ("invalid /ID in trailer dictionary")."""
    permissions = -4
    owner = _rc4(hashlib.md5(owner_password + _PASSWORD_PAD).digest()[:5], _PASSWORD_PAD)
    key = hashlib.md5(_PASSWORD_PAD + owner + struct.pack("<i", permissions)).digest()[:5]
    user = _rc4(key, _PASSWORD_PAD)
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages)).encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
        *[b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << >> >>"] * pages,
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>"
        % (owner.hex().encode(), user.hex().encode(), permissions),
    ]
    data = raw_pdf(objects)
    # raw_pdf writes a trailer without /ID; point it at the encryption dictionary too.
    return data.replace(b"/Root 1 0 R >>", b"/Root 1 0 R /Encrypt %d 0 R >>" % len(objects))


# ---- images -----------------------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF
    )


@functools.lru_cache(maxsize=4)
def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A real, fully decodable 1-bit greyscale PNG of width x height white pixels.

    30000 x 30000 is 900 megapixels (about 112 MB packed, 900 MB as 8-bit), in about 170 kB.
    """
    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter type 0, then white pixels
    packer = zlib.compressobj(6)
    rows = 64
    block = row * rows
    parts = []
    for _ in range(height // rows):
        parts.append(packer.compress(block))
    parts.append(packer.compress(row * (height % rows)))
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))


# ---- special files ----------------------------------------------------------------------------


def make_fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def make_socket(path: Path) -> socket.socket:
    """A listening Unix socket at `path`; the caller closes it (the file stays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(os.fsencode(path)) >= 100:
        raise ValueError(f"socket path too long for AF_UNIX: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock
