"""Cut a document into request-sized chunks: consecutive pages as standalone PDFs, one at a time.

A chunk holds at most `max_pages` pages and `max_bytes` bytes. The layout depends only on the file
and those two limits, so a resumed run cuts the same chunks and can skip those already answered.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

from pypdf import PdfReader, PdfWriter
from pypdf.errors import FileNotDecryptedError, PdfReadError, PdfStreamError

from pipeline.errors import EncryptedError, InputError, TooLargeError
from pipeline.models import Chunk
from pipeline.sniff import PDF

# pypdf logs every recoverable oddity of a damaged file at WARNING; the pipeline reports failures
# itself, so keep the console for what the operator must act on.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def open_pdf(data: bytes, rel: str, passwords: list[str] | None = None) -> PdfReader:
    """Open a PDF from memory, decrypting it with an empty or configured password when needed."""
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            for password in ["", *(passwords or [])]:
                try:
                    if reader.decrypt(password):
                        break
                except (NotImplementedError, PdfReadError) as exc:
                    raise EncryptedError(f"{rel}: PDF uses unsupported encryption ({exc})") from None
            else:
                raise EncryptedError(f"{rel}: PDF is password-protected")
        count = len(reader.pages)
    except EncryptedError:
        raise
    except FileNotDecryptedError:
        raise EncryptedError(f"{rel}: PDF is password-protected") from None
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, RecursionError, AssertionError, OSError) as exc:
        raise InputError(
            f"{rel}: PDF is damaged and cannot be read ({type(exc).__name__}: {exc})",
            hint="re-export or repair it (e.g. `qpdf in.pdf out.pdf`) and run again",
        ) from None
    if count == 0:
        raise InputError(f"{rel}: PDF has no pages")
    return reader


def _write(reader: PdfReader, start: int, stop: int) -> bytes:
    writer = PdfWriter()
    for i in range(start, stop):
        writer.add_page(reader.pages[i])
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def pdf_page_count(data: bytes, rel: str, passwords: list[str] | None = None) -> int:
    return len(open_pdf(data, rel, passwords).pages)


def iter_chunks(
    path: Path,
    rel: str,
    media_type: str,
    *,
    max_pages: int,
    max_bytes: int,
    passwords: list[str] | None = None,
    data: bytes | None = None,
    max_document_pages: int | None = None,
) -> Iterator[Chunk]:
    """Yield the chunks of one document in page order, building each only when asked for.

    A PDF of more than `max_document_pages` pages fails as too_large before any chunk is made.
    """
    if data is None:
        data = path.read_bytes()
    if media_type != PDF:
        if len(data) > max_bytes:
            raise TooLargeError(
                f"{rel}: image is {len(data):,} bytes, above the backend's {max_bytes:,} per request",
                hint="downscale or recompress it, or raise max_bytes_per_request if the backend allows",
            )
        yield Chunk(rel, 0, 0, 1, media_type, data, hashlib.sha256(data).hexdigest())
        return
    reader = open_pdf(data, rel, passwords)
    total = len(reader.pages)
    if max_document_pages is not None and total > max_document_pages:
        raise TooLargeError(
            f"{rel}: {total:,} pages, above max_pages_per_document ({max_document_pages:,})",
            hint="raise max_pages_per_document or run with --allow-large-documents",
        )
    if total <= max_pages and len(data) <= max_bytes and not reader.is_encrypted:
        # Small enough as it is: send the original bytes untouched.
        yield Chunk(rel, 0, 0, total, PDF, data, hashlib.sha256(data).hexdigest())
        return
    del data
    start, index = 0, 0
    while start < total:
        count = min(max_pages, total - start)
        while True:
            try:
                body = _write(reader, start, start + count)
            except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError,
                    AttributeError, RecursionError) as exc:
                raise InputError(
                    f"{rel}: pages {start + 1}-{start + count} cannot be copied ({exc})",
                    hint="the PDF is damaged; re-export or repair it",
                ) from None
            if len(body) <= max_bytes:
                break
            if count == 1:
                raise TooLargeError(
                    f"{rel}: page {start + 1} alone is {len(body):,} bytes, above the backend's"
                    f" {max_bytes:,} per request",
                    hint="reduce the page's image resolution, or raise max_bytes_per_request",
                )
            # Shrink in proportion to the overshoot, at least by one page.
            count = max(1, min(count - 1, int(count * max_bytes / len(body) * 0.9)))
        yield Chunk(rel, index, start, count, PDF, body, hashlib.sha256(body).hexdigest())
        start += count
        index += 1
