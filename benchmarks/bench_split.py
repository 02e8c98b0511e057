"""Split cost: pages/s of cutting large PDFs into chunks, side by side in one run:
a plain pypdf chunker (what the pipeline did before it moved to qpdf: PdfReader, then one
PdfWriter with `add_page` per chunk) against the pipeline's own `pipeline.stages.split.iter_chunks`
(pikepdf / qpdf since commit 93b1b6c).

    .venv/bin/python benchmarks/bench_split.py              # 2,000-page and 500-page PDFs, 3 rounds
    .venv/bin/python benchmarks/bench_split.py --short      # 500-page PDF, 1 round

Both sides read the same bytes from memory and produce standalone chunk PDFs of `--chunk-pages`
pages, with the sha256 of each chunk (as the pipeline computes it). The chunks of both sides are
checked: each opens with pypdf, has the right page count and carries the right page's text.
`iter_chunks` is also checked on a PDF with an image on every page (bytes per chunk compared with
the pypdf chunker), on an AES-256 encrypted PDF (opened with the configured password, chunks come
out unencrypted), with a wrong password (EncryptedError), and for deterministic chunk bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Results, banner, big_pdf, page_text, table  # noqa: E402

from pipeline.errors import EncryptedError  # noqa: E402
from pipeline.stages.sniff import PDF  # noqa: E402
from pipeline.stages.split import iter_chunks  # noqa: E402

BASELINE = "pypdf chunker"
PIPELINE = "iter_chunks (pikepdf)"


def split_pypdf(data: bytes, chunk_pages: int, password: str = "") -> list[tuple[int, bytes]]:
    """The plain pypdf chunker the pipeline used before: one PdfWriter per chunk, add_page."""
    from pypdf import PdfReader, PdfWriter

    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        reader.decrypt(password)
    total = len(reader.pages)
    out = []
    for start in range(0, total, chunk_pages):
        stop = min(total, start + chunk_pages)
        writer = PdfWriter()
        for i in range(start, stop):
            writer.add_page(reader.pages[i])
        buf = io.BytesIO()
        writer.write(buf)
        body = buf.getvalue()
        hashlib.sha256(body).hexdigest()
        out.append((stop - start, body))
    return out


def split_pipeline(data: bytes, chunk_pages: int,
                   passwords: list[str] | None = None) -> list[tuple[int, bytes]]:
    """The pipeline's own splitter (pikepdf), as the runner calls it."""
    path = Path("bench.pdf")
    return [
        (c.page_count, c.data)
        for c in iter_chunks(path, path.name, PDF, max_pages=chunk_pages, max_bytes=45_000_000,
                             passwords=passwords, data=data, max_document_pages=None)
    ]


def check_chunks(chunks: list[tuple[int, bytes]], doc: str, total: int, chunk_pages: int) -> str:
    """Every chunk opens, has the expected page count, and each page has its own text."""
    from pypdf import PdfReader

    page = 0
    for count, body in chunks:
        reader = PdfReader(io.BytesIO(body))
        if len(reader.pages) != count or count != min(chunk_pages, total - page):
            return f"wrong page count at page {page + 1}"
        for p in reader.pages:
            if page_text(doc, page) not in (p.extract_text() or ""):
                return f"wrong text on page {page + 1}"
            page += 1
    return "ok" if page == total else f"{page} pages in all, expected {total}"


def timed(fn, rounds: int) -> tuple[float, list[tuple[int, bytes]]]:  # type: ignore[no-untyped-def]
    times, result = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def pdf_texts(doc: str, pages: int) -> bytes:
    from common import pdf_bytes

    return pdf_bytes([page_text(doc, i) for i in range(pages)])


def extra_checks(chunk_pages: int) -> list[str]:
    """iter_chunks on the cases the split tests cover: images, encryption, determinism."""
    import pikepdf
    from PIL import Image
    from reportlab.lib.pagesizes import letter
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    notes = []
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter)
    for i in range(2 * chunk_pages):
        img = Image.effect_noise((185, 185), 60 + i).convert("RGB")
        c.drawImage(ImageReader(img), 72, 300, 185, 185)
        c.drawString(72, 700, page_text("img", i))
        c.showPage()
    c.save()
    data = buf.getvalue()
    a, b = split_pypdf(data, chunk_pages), split_pipeline(data, chunk_pages)
    notes.append(f"PDF with one image per page, {2 * chunk_pages} pages ({len(data):,} bytes):"
                 f" {BASELINE} chunks {[len(x) for _, x in a]} bytes,"
                 f" {PIPELINE} chunks {[len(x) for _, x in b]} bytes;"
                 f" {PIPELINE} check: {check_chunks(b, 'img', 2 * chunk_pages, chunk_pages)}")
    again = split_pipeline(data, chunk_pages)
    notes.append(f"{PIPELINE} twice on the same bytes: chunk bytes"
                 f" {'identical' if again == b else 'DIFFERENT'}")
    plain = io.BytesIO(pdf_texts("enc", chunk_pages + 3))
    enc = io.BytesIO()
    with pikepdf.open(plain) as pdf:
        pdf.save(enc, encryption=pikepdf.Encryption(user="secret", owner="owner", R=6))
    try:
        chunks = split_pipeline(enc.getvalue(), chunk_pages, passwords=["secret"])
        unencrypted = all(not pikepdf.open(io.BytesIO(x)).is_encrypted for _, x in chunks)
        notes.append(f"encrypted PDF (AES-256, user password): {PIPELINE} opens it with the"
                     f" configured password, chunks {'unencrypted' if unencrypted else 'ENCRYPTED'},"
                     f" check: {check_chunks(chunks, 'enc', chunk_pages + 3, chunk_pages)}")
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not fail
        notes.append(f"encrypted PDF: {PIPELINE} failed: {exc}")
    try:
        split_pipeline(enc.getvalue(), chunk_pages, passwords=["wrong"])
        notes.append(f"encrypted PDF, wrong password: {PIPELINE} did NOT refuse it")
    except EncryptedError:
        notes.append(f"encrypted PDF, wrong password: {PIPELINE} raises EncryptedError")
    return notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--chunk-pages", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=None, help="median of N rounds (3; short 1)")
    ap.add_argument("--json")
    args = ap.parse_args()
    banner(f"split cost: {BASELINE} (pypdf PdfWriter.add_page per chunk, the pipeline before"
           f" 93b1b6c) vs {PIPELINE}, the pipeline now; side by side")
    rounds = args.rounds or (1 if args.short else 3)
    sizes = [500] if args.short else [500, 2000]
    res = Results("split")
    rows = []
    for pages in sizes:
        path = big_pdf(pages)
        data = path.read_bytes()
        t_py, chunks_py = timed(lambda d=data: split_pypdf(d, args.chunk_pages), rounds)
        t_pk, chunks_pk = timed(lambda d=data: split_pipeline(d, args.chunk_pages), rounds)
        row = {"pdf": f"{pages} pages, {len(data) / 1e6:.1f} MB", "chunk": args.chunk_pages,
               "pypdf_s": t_py, "pypdf_pages/s": pages / t_py,
               "pypdf_chunk_kb": statistics.mean(len(b) for _, b in chunks_py) / 1024,
               "pypdf_check": check_chunks(chunks_py, "big", pages, args.chunk_pages),
               "iter_chunks_s": t_pk, "iter_chunks_pages/s": pages / t_pk,
               "iter_chunks_chunk_kb": statistics.mean(len(b) for _, b in chunks_pk) / 1024,
               "iter_chunks_check": check_chunks(chunks_pk, "big", pages, args.chunk_pages),
               "speedup": t_py / t_pk}
        rows.append(row)
        res.details.append(row)
    print(f"   pypdf_* = {BASELINE} (baseline); iter_chunks_* = pipeline.stages.split.{PIPELINE}")
    print(table(rows, list(rows[0])))
    for row in rows:
        res.add(f"{BASELINE} (old path) pages/s ({row['pdf']})", row["pypdf_pages/s"], "pages/s",
                note=f"check {row['pypdf_check']}")
        res.add(f"{PIPELINE} pages/s ({row['pdf']})", row["iter_chunks_pages/s"], "pages/s",
                note=f"x{row['speedup']:.1f} vs the pypdf chunker, check {row['iter_chunks_check']}")
    for note in extra_checks(args.chunk_pages):
        print("   " + note)
    res.print_figures()
    res.dump(args.json)


if __name__ == "__main__":
    main()
