"""Split cost: pages/s of cutting large PDFs into chunks, the pipeline's pypdf path
(`pipeline.split.iter_chunks`) against pikepdf doing the same chunking, side by side in one run.

    .venv/bin/python benchmarks/bench_split.py              # 2,000-page and 500-page PDFs, 3 rounds
    .venv/bin/python benchmarks/bench_split.py --short      # 500-page PDF, 1 round
    .venv/bin/pip install pikepdf                           # benchmark-only dependency

Both sides read the same bytes from memory and produce standalone chunk PDFs of `--chunk-pages`
pages (sha256 of each chunk included, as the pipeline computes it). pikepdf's chunks are checked:
each opens with pypdf, has the right page count and carries the right page's text; the same
checks run on a PDF with images (bytes per chunk compared) and an encrypted PDF (password).
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

from pipeline.sniff import PDF  # noqa: E402
from pipeline.split import iter_chunks  # noqa: E402


def split_pypdf(path: Path, data: bytes, chunk_pages: int) -> list[tuple[int, bytes]]:
    return [
        (c.page_count, c.data)
        for c in iter_chunks(path, path.name, PDF, max_pages=chunk_pages,
                             max_bytes=45_000_000, data=data, max_document_pages=None)
    ]


def split_pikepdf(data: bytes, chunk_pages: int, password: str = "") -> list[tuple[int, bytes]]:
    import pikepdf

    out = []
    with pikepdf.open(io.BytesIO(data), password=password) as src:
        total = len(src.pages)
        for start in range(0, total, chunk_pages):
            stop = min(total, start + chunk_pages)
            dst = pikepdf.new()
            dst.pages.extend(src.pages[start:stop])
            buf = io.BytesIO()
            dst.save(buf)
            body = buf.getvalue()
            hashlib.sha256(body).hexdigest()
            out.append((stop - start, body))
    return out


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


def extra_checks(chunk_pages: int) -> list[str]:
    """pikepdf on the cases the split tests cover: images (bytes per chunk) and encryption."""
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
    path = Path("images.pdf")
    a, b = split_pypdf(path, data, chunk_pages), split_pikepdf(data, chunk_pages)
    notes.append(f"PDF with one image per page, {2 * chunk_pages} pages ({len(data):,} bytes):"
                 f" pypdf chunks {[len(x) for _, x in a]} bytes,"
                 f" pikepdf chunks {[len(x) for _, x in b]} bytes;"
                 f" pikepdf check: {check_chunks(b, 'img', 2 * chunk_pages, chunk_pages)}")
    plain = io.BytesIO(pdf_texts(chunk_pages + 3))
    enc = io.BytesIO()
    with pikepdf.open(plain) as pdf:
        pdf.save(enc, encryption=pikepdf.Encryption(user="secret", owner="owner", R=6))
    try:
        chunks = split_pikepdf(enc.getvalue(), chunk_pages, password="secret")
        notes.append("encrypted PDF (AES-256, user password): pikepdf opens it with the password,"
                     f" chunks unencrypted: {check_chunks(chunks, 'enc', chunk_pages + 3, chunk_pages)}")
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not fail
        notes.append(f"encrypted PDF: pikepdf failed: {exc}")
    try:
        split_pikepdf(enc.getvalue(), chunk_pages, password="wrong")
        notes.append("encrypted PDF, wrong password: pikepdf did NOT refuse it")
    except pikepdf.PasswordError:
        notes.append("encrypted PDF, wrong password: pikepdf raises PasswordError (map to 'encrypted')")
    return notes


def pdf_texts(pages: int) -> bytes:
    from common import pdf_bytes

    return pdf_bytes([page_text("enc", i) for i in range(pages)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--chunk-pages", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=None, help="median of N rounds (3; short 1)")
    ap.add_argument("--json")
    args = ap.parse_args()
    banner("split cost: pypdf (pipeline.split.iter_chunks) vs pikepdf, side by side")
    try:
        import pikepdf
    except ImportError:
        print("   pikepdf is not installed: .venv/bin/pip install pikepdf (benchmark-only);"
              " measuring pypdf alone")
        pikepdf = None  # type: ignore[assignment]
    rounds = args.rounds or (1 if args.short else 3)
    sizes = [500] if args.short else [500, 2000]
    res = Results("split")
    rows = []
    for pages in sizes:
        path = big_pdf(pages)
        data = path.read_bytes()
        t_py, chunks_py = timed(lambda p=path, d=data: split_pypdf(p, d, args.chunk_pages), rounds)
        row = {"pdf": f"{pages} pages, {len(data) / 1e6:.1f} MB", "chunk": args.chunk_pages,
               "pypdf_s": t_py, "pypdf_pages/s": pages / t_py,
               "pypdf_chunk_kb": statistics.mean(len(b) for _, b in chunks_py) / 1024,
               "pypdf_check": check_chunks(chunks_py, "big", pages, args.chunk_pages)}
        if pikepdf is not None:
            t_pk, chunks_pk = timed(lambda d=data: split_pikepdf(d, args.chunk_pages), rounds)
            row |= {"pikepdf_s": t_pk, "pikepdf_pages/s": pages / t_pk,
                    "pikepdf_chunk_kb": statistics.mean(len(b) for _, b in chunks_pk) / 1024,
                    "pikepdf_check": check_chunks(chunks_pk, "big", pages, args.chunk_pages),
                    "speedup": t_py / t_pk}
        rows.append(row)
        res.details.append(row)
    print(table(rows, list(rows[0])))
    for row in rows:
        res.add(f"pypdf split pages/s ({row['pdf']})", row["pypdf_pages/s"], "pages/s",
                note=f"check {row['pypdf_check']}")
        if "speedup" in row:
            res.add(f"pikepdf split pages/s ({row['pdf']})", row["pikepdf_pages/s"], "pages/s",
                    note=f"x{row['speedup']:.1f} vs pypdf, check {row['pikepdf_check']}")
    if pikepdf is not None:
        for note in extra_checks(args.chunk_pages):
            print("   " + note)
    res.print_figures()
    res.dump(args.json)


if __name__ == "__main__":
    main()
