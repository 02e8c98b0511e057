"""Cut a document into request-sized chunks: consecutive pages as standalone PDFs, one at a time.

A chunk holds at most `max_pages` pages and `max_bytes` bytes. The layout depends only on the file
and those two limits, and chunk bytes are deterministic, so a resumed run cuts the same chunks and
can skip those already answered.

PDFs are opened and cut with qpdf (pikepdf): measured 2.9-4.2x faster than pypdf on the same
chunking (docs/performance.md), it repairs damaged files properly and says what it fixed, and it
decrypts every standard encryption.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pikepdf

from pipeline.errors import EncryptedError, InputError, TooLargeError
from pipeline.models import Chunk
from pipeline.reasons import exception_text
from pipeline.stages.pdfrepair import lost_content, repair_notes
from pipeline.stages.sniff import PDF
from pipeline.stages.tiff import frames_as_png


@dataclass
class PdfFacts:
    """What opening a PDF tells: enough to decide whether its bytes can be sent as they are."""

    pages: int
    repaired: bool  # qpdf had to fix the file's structure to read it
    encrypted: bool
    repair_notes: list[str] = field(default_factory=list)

    def sendable_as_is(self, size: int, max_pages: int, max_bytes: int,
                       max_document_pages: int | None) -> bool:
        """One chunk of the original bytes: small enough, and nothing to decrypt or repair."""
        return (self.pages <= max_pages and size <= max_bytes and not self.encrypted
                and not self.repaired
                and (max_document_pages is None or self.pages <= max_document_pages))


@dataclass
class OpenedPdf(PdfFacts):
    pdf: pikepdf.Pdf = field(kw_only=True)


def _damaged(rel: str, exc: Exception) -> InputError:
    return InputError(
        f"{rel}: PDF is damaged and cannot be read, even after an attempt to repair it"
        f" ({exception_text(exc)})",
        hint="re-export it from its source application and run again",
    )


def open_pdf(data: bytes, rel: str, passwords: list[str] | None = None) -> OpenedPdf:
    """Open a PDF from memory, decrypting it with an empty or configured password when needed."""
    pdf: pikepdf.Pdf | None = None
    for password in ["", *(passwords or [])]:
        try:
            pdf = pikepdf.open(io.BytesIO(data), password=password)
            break
        except pikepdf.PasswordError:
            continue
        except (pikepdf.PdfError, RuntimeError, ValueError, OSError) as exc:
            raise _damaged(rel, exc) from None
    if pdf is None:
        raise EncryptedError(
            f"{rel}: PDF is password-protected",
            hint="add its password to pdf_passwords in the config, or decrypt it first"
            " (`qpdf --password=... --decrypt in.pdf out.pdf`)",
        )
    try:
        pages = len(pdf.pages)
        notes = repair_notes(pdf)
        if notes and (lost := lost_content(pdf, data, notes)) is not None:
            raise InputError(
                f"{rel}: PDF is damaged: page {lost}'s content is missing ({notes[0]})",
                hint="re-export it from its source application; a repair would give blank pages",
            )
    except InputError:
        pdf.close()
        raise
    except (pikepdf.PdfError, RuntimeError, ValueError, RecursionError) as exc:
        pdf.close()
        raise _damaged(rel, exc) from None
    if pages == 0:
        pdf.close()
        raise InputError(f"{rel}: PDF has no pages", hint="nothing to OCR; remove or exclude it")
    return OpenedPdf(pages, bool(notes), pdf.is_encrypted, notes, pdf=pdf)


def _write(pdf: pikepdf.Pdf, start: int, stop: int) -> bytes:
    """Pages [start, stop) as a standalone, unencrypted PDF, byte-for-byte the same every time."""
    out = pikepdf.new()
    try:
        out.pages.extend(pdf.pages[start:stop])
        buf = io.BytesIO()
        out.save(buf, deterministic_id=True)
    finally:
        out.close()
    return buf.getvalue()


def pdf_facts(data: bytes, rel: str, passwords: list[str] | None = None) -> PdfFacts:
    """Open, read the facts, close: what a PDF probe runs in its own process."""
    opened = open_pdf(data, rel, passwords)
    opened.pdf.close()
    return PdfFacts(opened.pages, opened.repaired, opened.encrypted, opened.repair_notes)


def pdf_page_count(data: bytes, rel: str, passwords: list[str] | None = None) -> int:
    return pdf_facts(data, rel, passwords).pages


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
    on_open: Callable[[PdfFacts], None] | None = None,
    known: PdfFacts | None = None,
    data_sha256: str | None = None,
) -> Iterator[Chunk]:
    """Yield the chunks of one document in page order, building each only when asked for.

    A PDF of more than `max_document_pages` pages fails as too_large before any chunk is made.
    A PDF whose `known` facts (found by another process, run/pdf_probes.py) say it can be sent
    as it is is never opened here (qpdf holds the GIL while it parses: ~1 ms per 50-page file,
    docs/performance.md); anything else (to cut, encrypted, damaged, or no facts) is opened
    here.
    `data_sha256` is the sha256 of `data` when the caller has it already (a document sent whole
    is not hashed twice).
    """
    if data is None:
        data, data_sha256 = path.read_bytes(), None
    if media_type == "image/tiff":
        for index, png in enumerate(frames_as_png(data, rel)):
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
        yield Chunk(rel, 0, 0, 1, media_type, data, _sha256(data, data_sha256))
        return
    if known is not None and known.sendable_as_is(len(data), max_pages, max_bytes,
                                                  max_document_pages):
        if on_open is not None:
            on_open(known)
        yield Chunk(rel, 0, 0, known.pages, PDF, data, _sha256(data, data_sha256))
        return
    opened = open_pdf(data, rel, passwords)
    try:
        if on_open is not None:
            on_open(opened)
        yield from _pdf_chunks(opened, rel, data, max_pages, max_bytes, max_document_pages,
                               data_sha256)
    finally:
        opened.pdf.close()


def _sha256(data: bytes, known: str | None) -> str:
    """`known` (the caller's hash of these bytes) or the hash computed now."""
    return known or hashlib.sha256(data).hexdigest()


def _pdf_chunks(
    opened: OpenedPdf,
    rel: str,
    data: bytes,
    max_pages: int,
    max_bytes: int,
    max_document_pages: int | None,
    data_sha256: str | None,
) -> Iterator[Chunk]:
    total, pdf = opened.pages, opened.pdf
    if max_document_pages is not None and total > max_document_pages:
        raise TooLargeError(
            f"{rel}: {total:,} pages, above max_pages_per_document ({max_document_pages:,})",
            hint="raise max_pages_per_document or run with --allow-large-documents",
        )
    if opened.sendable_as_is(len(data), max_pages, max_bytes, None):
        # Small enough as it is: send the original bytes untouched.
        yield Chunk(rel, 0, 0, total, PDF, data, _sha256(data, data_sha256))
        return
    start, index = 0, 0
    while start < total:
        count = min(max_pages, total - start)
        while True:
            try:
                body = _write(pdf, start, start + count)
            except (pikepdf.PdfError, RuntimeError, ValueError, RecursionError) as exc:
                raise InputError(
                    f"{rel}: pages {start + 1}-{start + count} cannot be copied ({exception_text(exc)})",
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
