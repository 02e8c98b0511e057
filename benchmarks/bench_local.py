"""Benchmark of the local engine: throughput (pages/min) and accuracy (CER) on generated pages.

    .venv/bin/python benchmarks/bench_local.py                 # everything, ~4 min on 2 cores
    .venv/bin/python benchmarks/bench_local.py --pages 6 --no-ocrmypdf
    .venv/bin/python benchmarks/bench_local.py --tessdata /path/to/other/tessdata

Pages are typeset with known text (prose at 9/11/14 pt, two columns, a table), rasterised and
degraded (tests/local_fixtures.py): clean150, clean300, noise300, rot300 (1.5° tilt), jpeg300
(quality 20) and combo150 (tilt + noise + JPEG at 150 dpi). CER is Levenshtein distance over the
reference length after whitespace and markdown marks are normalised. Throughput runs a scanned
(image-only) 300 dpi PDF and a born-digital PDF through LocalBackend exactly as the pipeline does,
and OCRmyPDF (Debian package, `--jobs N`, OMP_THREAD_LIMIT=1) on the same scanned PDF.
This is a script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.backends.local import LocalBackend  # noqa: E402
from pipeline.config import LocalSettings  # noqa: E402
from pipeline.models import Chunk  # noqa: E402
from tests.local_fixtures import (  # noqa: E402
    PARAGRAPHS,
    TITLES,
    VARIANTS,
    Page,
    cer,
    image_pdf,
    multi_page_pdf,
    prose_page,
    render,
    table_page,
    to_bytes,
    variant,
)


def corpus(n: int) -> list[Page]:
    """n pages: prose at 9/11/14 pt in one or two columns, and a table page every sixth."""
    pages: list[Page] = []
    sizes = [11, 9, 14, 11, 10]
    for i in range(n):
        if i % 6 == 5:
            pages.append(table_page())
            continue
        k = len(PARAGRAPHS)
        paras = [PARAGRAPHS[(i + j) % k] for j in range(4 if sizes[i % 5] >= 11 else 6)]
        pages.append(
            prose_page(
                TITLES[i % len(TITLES)],
                paras,
                font_size=sizes[i % 5],
                columns=2 if i % 4 == 3 else 1,
            )
        )
    return pages


def chunk(data: bytes, media_type: str, pages: int = 1) -> Chunk:
    return Chunk("bench", 0, 0, pages, media_type, data, hashlib.sha256(data).hexdigest())


async def run_backend(backend: LocalBackend, chunks: list[Chunk]) -> tuple[float, list[dict]]:
    """All chunks concurrently (as the pipeline's workers would); wall time and pages."""
    t0 = time.perf_counter()
    results = await asyncio.gather(*(backend.ocr(c) for c in chunks))
    return time.perf_counter() - t0, [p for r in results for p in r["pages"]]


async def bench(args: argparse.Namespace) -> None:
    settings = LocalSettings(language="eng", dpi=300, processes=args.processes, tessdata_path=args.tessdata)
    backend = LocalBackend(settings)
    procs = backend.processes
    print(
        f"tessdata: {backend.tessdata}  eng.traineddata "
        f"{(backend.tessdata / 'eng.traineddata').stat().st_size / 1e6:.1f} MB  processes: {procs}"
    )
    t0 = time.perf_counter()
    await backend.warm_up()
    print(f"pool start + Tesseract init: {time.perf_counter() - t0:.2f} s")
    pages = corpus(args.pages)

    # Accuracy per variant: each page image as a PNG chunk carrying its dpi.
    print(f"\nCER over {len(pages)} pages (mean / worst page), OCR time per page on {procs} processes")
    cer_rows = []
    for name in args.variants:
        chunks, refs = [], []
        for p in pages:
            img, dpi = variant(p.pdf, name)
            chunks.append(chunk(to_bytes(img, "PNG", dpi=(dpi, dpi)), "image/png"))
            refs.append(p.text)
        wall, out = await run_backend(backend, chunks)
        cers = [cer(r, o["markdown"]) * 100 for r, o in zip(refs, out, strict=True)]
        conf = statistics.mean(o["confidence"] or 0 for o in out)
        cer_rows.append((name, statistics.mean(cers), max(cers), wall / len(out), conf))
        print(
            f"  {name:9s} CER {statistics.mean(cers):5.2f} % (worst {max(cers):5.2f} %)  "
            f"{wall / len(out):.2f} s/page wall  mean conf {conf:.1f}"
        )

    # Throughput: a scanned 300 dpi PDF (image-only), split in chunks like the pipeline does.
    scans = [render(p.pdf, 300) for p in pages]
    scanned = image_pdf(scans, 300)
    per_chunk = args.chunk_pages
    scan_chunks = [
        chunk(image_pdf(scans[i : i + per_chunk], 300), "application/pdf", len(scans[i : i + per_chunk]))
        for i in range(0, len(scans), per_chunk)
    ]
    wall, out = await run_backend(backend, scan_chunks)
    ocr_ppm = len(out) / wall * 60
    assert len(out) == len(scans) and all(p["method"] == "ocr" for p in out)
    print(f"\nscanned PDF, 300 dpi, {len(out)} pages: {wall:.1f} s = {ocr_ppm:.1f} pages/min")

    # Text layer: a born-digital PDF, repeated to get a measurable time.
    born, _ = multi_page_pdf([(p.title, p.paragraphs) for p in pages if p.paragraphs][:10])
    reps = 20
    text_chunks = [chunk(born, "application/pdf", 10) for _ in range(reps)]
    wall, out = await run_backend(backend, text_chunks)
    assert all(p["method"] == "text_layer" for p in out)
    print(
        f"born-digital PDF: {len(out)} pages in {wall:.2f} s = {len(out) / wall * 60:,.0f} pages/min "
        f"({wall / len(out) * 1000:.1f} ms/page incl. IPC)"
    )
    await backend.close()

    if args.ocrmypdf:
        ocrmypdf_bench(scanned, len(scans), procs, ocr_ppm)
    print("\nreproduce: .venv/bin/python benchmarks/bench_local.py " + " ".join(sys.argv[1:]))


def ocrmypdf_bench(scanned: bytes, n: int, jobs: int, ours: float) -> None:
    exe = shutil.which("ocrmypdf")
    if exe is None:
        print("\nocrmypdf: not installed (apt-get install -y ocrmypdf); skipped")
        return
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "scanned.pdf"
        src.write_bytes(scanned)
        for label, extra in [
            ("default (PDF/A output)", []),
            ("--output-type pdf --optimize 0", ["--output-type", "pdf", "--optimize", "0"]),
        ]:
            cmd = [exe, "--jobs", str(jobs), "-l", "eng", *extra, str(src), str(Path(tmp) / "out.pdf")]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"\nocrmypdf {label}: failed ({proc.returncode}): {proc.stderr[-300:]}")
                continue
            ppm = n / wall * 60
            print(
                f"ocrmypdf {version} {label}: {n} pages in {wall:.1f} s = {ppm:.1f} pages/min "
                f"(local engine: {ours / ppm:.2f}x)"
            )
            print(f"  command: OMP_THREAD_LIMIT=1 {' '.join(cmd[:-2])} scanned.pdf out.pdf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=12, help="generated pages (default 12)")
    ap.add_argument("--processes", type=int, default=0, help="worker processes (0 = cores)")
    ap.add_argument("--tessdata", default=None, help="tessdata folder (default: as configured)")
    ap.add_argument("--variants", nargs="*", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--chunk-pages", type=int, default=10, help="pages per chunk (pipeline default 10)")
    ap.add_argument("--no-ocrmypdf", dest="ocrmypdf", action="store_false")
    asyncio.run(bench(ap.parse_args()))


if __name__ == "__main__":
    main()
