"""Cut a document into request-sized chunks: consecutive pages as standalone PDFs, one at a time.

A chunk holds at most `max_pages` pages and `max_bytes` bytes. The layout depends only on the file
and those two limits, so a resumed run cuts the same chunks and can skip those already answered.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pypdf import PdfReader, PdfWriter
from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError, PdfStreamError

from pipeline.errors import EncryptedError, InputError, TooLargeError
from pipeline.models import Chunk
from pipeline.pdfrepair import pypdf_warnings, repair
from pipeline.sniff import PDF
from pipeline.tiff import tiff_frames_as_png

# pypdf logs every oddity of a damaged file at WARNING. They are collected per file (to decide on
# a repair) and reported by the pipeline itself, so they must not reach the console.
_PYPDF_LOG = logging.getLogger("pypdf")
_PYPDF_LOG.setLevel(logging.WARNING)
_PYPDF_LOG.propagate = False


_PARSE_ERRORS = (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError, AttributeError,
                 IndexError, RecursionError, AssertionError, OSError)


def _open_pypdf(data: bytes, rel: str, passwords: list[str] | None) -> PdfReader:
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            for password in ["", *(passwords or [])]:
                try:
                    if reader.decrypt(password):
                        break
                except (NotImplementedError, PdfReadError, DependencyError) as exc:
                    raise EncryptedError(f"{rel}: PDF uses unsupported encryption ({exc})") from None
            else:
                raise EncryptedError(
                    f"{rel}: PDF is password-protected",
                    hint="add its password to pdf_passwords in the config, or decrypt it first"
                    " (`qpdf --password=... --decrypt in.pdf out.pdf`)",
                )
        count = len(reader.pages)
    except EncryptedError:
        raise
    except FileNotDecryptedError:
        raise EncryptedError(f"{rel}: PDF is password-protected") from None
    except _PARSE_ERRORS as exc:
        raise InputError(
            f"{rel}: PDF is damaged and cannot be read, even after an attempt to repair it"
            f" ({type(exc).__name__}: {exc})",
            hint="re-export it from its source application and run again",
        ) from None
    if count == 0:
        raise InputError(f"{rel}: PDF has no pages", hint="nothing to OCR; remove or exclude it")
    return reader


@dataclass
class OpenedPdf:
    reader: PdfReader
    data: bytes  # what the chunks are cut from: the original, or qpdf's repaired rewrite
    repaired: bool
    repair_notes: list[str]


def open_pdf(data: bytes, rel: str, passwords: list[str] | None = None) -> OpenedPdf:
    """Open a PDF from memory, decrypting it with an empty or configured password when needed.

    A file pypdf cannot read, or can read only by guessing around damage, is rebuilt by qpdf
    first and marked repaired.
    """
    failure: InputError | None = None
    with pypdf_warnings() as warnings:
        try:
            reader = _open_pypdf(data, rel, passwords)
        except InputError as exc:
            failure = exc
    if failure is None and not warnings:
        return OpenedPdf(reader, data, False, [])
    fixed = repair(data, passwords)
    if fixed is None:
        if failure is not None:
            raise failure
        return OpenedPdf(reader, data, False, [])
    repaired_data, notes = fixed
    if failure is None and not notes:
        return OpenedPdf(reader, data, False, [])  # pypdf was fussy, qpdf found nothing wrong
    return OpenedPdf(_open_pypdf(repaired_data, rel, []), repaired_data, True, notes or warnings)


def _write(reader: PdfReader, start: int, stop: int) -> bytes:
    writer = PdfWriter()
    for i in range(start, stop):
        writer.add_page(reader.pages[i])
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def pdf_page_count(data: bytes, rel: str, passwords: list[str] | None = None) -> int:
    return len(open_pdf(data, rel, passwords).reader.pages)


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
    on_open: Callable[[OpenedPdf], None] | None = None,
) -> Iterator[Chunk]:
    """Yield the chunks of one document in page order, building each only when asked for.

    A PDF of more than `max_document_pages` pages fails as too_large before any chunk is made.
    """
    if data is None:
        data = path.read_bytes()
    if media_type == "image/tiff":
        for index, png in enumerate(tiff_frames_as_png(data, rel)):
            if len(png) > max_bytes:
                raise TooLargeError(
                    f"{rel}: frame {index + 1} is {len(png):,} bytes as PNG, above the backend's"
                    f" {max_bytes:,} per request",
                    hint="downscale the scan, or raise max_bytes_per_request if the backend allows",
                )
            yield Chunk(rel, index, index, 1, "image/png", png, hashlib.sha256(png).hexdigest())
        return
    if media_type != PDF:
        if len(data) > max_bytes:
            raise TooLargeError(
                f"{rel}: image is {len(data):,} bytes, above the backend's {max_bytes:,} per request",
                hint="downscale or recompress it, or raise max_bytes_per_request if the backend allows",
            )
        yield Chunk(rel, 0, 0, 1, media_type, data, hashlib.sha256(data).hexdigest())
        return
    opened = open_pdf(data, rel, passwords)
    if on_open is not None:
        on_open(opened)
    reader, data = opened.reader, opened.data
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
