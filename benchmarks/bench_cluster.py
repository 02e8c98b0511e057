"""The local engine on a Dask cluster: pages/min with 1 and 2 workers, the client's CPU per page,
and how many worker cores one client can feed.

Starts a real `dask scheduler` and `dask worker` processes (1 process x 1 thread each) on
127.0.0.1, and runs the real pipeline (`python -m pipeline run --cluster ...`) over generated
scanned pages, once per cluster size. The client's CPU is the pipeline process's own (user +
sys, from its rusage), minus what a run with nothing to read costs (start-up, connecting,
checking the workers), over the pages read.

    .venv/bin/python benchmarks/bench_cluster.py            # --docs 12 --pages 2 --dpi 150

On one machine the workers, the scheduler and the client share its cores: with 2 cores, 2
workers cannot reach twice 1 worker's speed. The projection uses 1 worker's speed per core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reportlab.lib.pagesizes import letter  # noqa: E402

from tests.dask_cluster import local_cluster  # noqa: E402
from tests.local_fixtures import PARAGRAPHS, TITLES, image_pdf, prose_page, render  # noqa: E402


def make_input(folder: Path, docs: int, pages: int, dpi: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        images = [
            render(prose_page(f"{TITLES[(d + p) % len(TITLES)]} {d}.{p}",
                              PARAGRAPHS[(d + p) % 4:(d + p) % 4 + 3], pagesize=letter).pdf, dpi)
            for p in range(pages)
        ]
        (folder / f"doc{d:03}.pdf").write_bytes(image_pdf(images, dpi))
    return docs * pages


def run_client(address: str, inp: Path, out: Path, dpi: int) -> dict[str, float]:
    """One pipeline run as a child process: its report and its own CPU seconds."""
    config = out.parent / f"bench-{dpi}.yaml"
    config.write_text(f"backend: local\nlocal:\n  dpi: {dpi}\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--cluster", address,
         "--input", str(inp), "--output", str(out), "--progress", "off", "--force"],
        cwd=ROOT, capture_output=True, text=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline run failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    runs = sorted((out / ".ocr-pipeline/runs").glob("*.json"))
    report = json.loads(runs[-1].read_text()) if runs else {"pages_done": 0, "duration_s": 0.0}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"pages": report["pages_done"], "run_s": report["duration_s"], "wall_s": wall, "cpu_s": cpu}


def measure(workers: int, inp: Path, empty: Path, warm: Path, scratch: Path, dpi: int) -> dict[str, float]:
    with local_cluster(scratch / f"cluster{workers}", workers=workers) as cl:
        idle = run_client(cl.address, empty, scratch / f"idle{workers}", dpi)
        run_client(cl.address, warm, scratch / f"warm{workers}", dpi)  # workers load Tesseract
        busy = run_client(cl.address, inp, scratch / f"out{workers}", dpi)
    pages = busy["pages"]
    return {
        "workers": workers,
        "pages": pages,
        "pages_per_min": pages / busy["run_s"] * 60,
        "client_cpu_s": busy["cpu_s"],
        "client_idle_cpu_s": idle["cpu_s"],
        "client_cpu_ms_per_page": max(busy["cpu_s"] - idle["cpu_s"], 0.0) / pages * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--pages", type=int, default=2, help="pages per document")
    ap.add_argument("--dpi", type=int, default=150, help="scan resolution of the generated pages,"
                    " and local.dpi they are read at")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        inp, empty, warm = scratch / "in", scratch / "empty", scratch / "warm"
        empty.mkdir()
        make_input(warm, 2, 1, args.dpi)
        total = make_input(inp, args.docs, args.pages, args.dpi)
        print(f"{total} scanned pages ({args.docs} PDFs x {args.pages}, letter at {args.dpi} dpi);"
              f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        results = [measure(n, inp, empty, warm, scratch, args.dpi) for n in (1, 2)]
        for r in results:
            print(f"  {r['workers']} worker(s) x 1 thread: {r['pages_per_min']:.0f} pages/min;"
                  f" client CPU {r['client_cpu_s']:.2f} s ({r['client_idle_cpu_s']:.2f} s with nothing"
                  f" to read), {r['client_cpu_ms_per_page']:.1f} ms per page")
        one, two = results
        ratio = two["pages_per_min"] / one["pages_per_min"]
        per_page_ms = (one["client_cpu_ms_per_page"] + two["client_cpu_ms_per_page"]) / 2
        worker_ms = 60_000 / one["pages_per_min"]  # one worker core's time per page
        fed = worker_ms / per_page_ms if per_page_ms > 0 else float("inf")
        print(f"  2 workers / 1 worker: {ratio:.2f}x")
        print(f"  client: {per_page_ms:.1f} ms CPU per page against {worker_ms:.0f} ms of worker"
              f" time per page: one client core can feed about {fed:.0f} worker cores"
              f" (load average now {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
