"""Batch mode at scale: N one-page documents through `python -m pipeline run --mode batch`
against the fake server's Batch API, with a SIGKILL at each crash point of a job's life and a
resume after each (a fresh output per crash point). Prints documents done, chunks answered
twice, cost against the synchronous price, and each run's peak RSS.

    .venv/bin/python benchmarks/bench_batch.py --docs 1000
    .venv/bin/python benchmarks/bench_batch.py --docs 10000 --points none   # peak RSS at 10x

What grows with the document count: `--trace DIR` runs the last run under tracemalloc and writes
its snapshots (at the traced peak, sampled every 0.25 s, and at exit) to DIR; `--compare A B`
prints what B holds more than A (e.g. the 10k run's peak snapshot against the 1k run's). A
traced run is several times slower and its peak RSS includes tracemalloc's own: not a figure.

    .venv/bin/python benchmarks/bench_batch.py --docs 1000 --points none --trace /tmp/tm
    .venv/bin/python benchmarks/bench_batch.py --docs 10000 --points none --trace /tmp/tm
    .venv/bin/python benchmarks/bench_batch.py --compare /tmp/tm/peak-1000 /tmp/tm/peak-10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PY, SCRATCH, banner, run_child, table  # noqa: E402
from pipeline.fakeserver import FakeServerOptions, start_fake_server  # noqa: E402
from pipeline.fakeserver.batch import batch_of  # noqa: E402
from tests.pdfgen import page_text, pdf_bytes  # noqa: E402

POINTS = ["batch_before_upload", "batch_after_upload", "batch_job_created", "batch_polling",
          "batch_downloading"]
SYNC_PRICE = 4.0  # mistral-ocr-latest, US$ per 1,000 pages


def make_tree(root: Path, docs: int) -> None:
    marker = root / f".made-{docs}"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    for i in range(docs):
        rel = f"d{i // 1000:03d}/doc{i:05d}.pdf"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(pdf_bytes([page_text(rel, 0)]))
    marker.touch()


def run(args: list[str], env: dict[str, str], trace: list[str] | None = None
        ) -> tuple[int, float, int]:
    """(exit code, seconds, peak RSS in MiB) of one pipeline process (under tracemalloc with
    `trace`: [peak snapshot file, exit snapshot file]). Through the launcher of run_child: this
    process hosts the fake server and its stored files, and a child's ru_maxrss would count
    our peak (benchmarks/common.py, LAUNCHER)."""
    command = [PY, "-c", TRACER, *trace] if trace else [PY, "-m", "pipeline"]
    child = run_child([*command, *args], env=env)
    return child.returncode, child.wall_s, int(child.maxrss_mb)


# The pipeline child under tracemalloc: the snapshot at the traced peak is rewritten whenever the
# traced memory passes the last one by 2% (dumped and dropped, so it does not count itself).
TRACER = """
import atexit, os, runpy, sys, threading, time, tracemalloc
peak_file, end_file = sys.argv[1], sys.argv[2]
tracemalloc.start(12)
def watch(best=0):
    while True:
        time.sleep(0.25)
        now = tracemalloc.get_traced_memory()[0]
        if now > best * 1.02:
            tracemalloc.take_snapshot().dump(peak_file + ".tmp")
            os.replace(peak_file + ".tmp", peak_file)
            best = now
threading.Thread(target=watch, daemon=True).start()
atexit.register(lambda: tracemalloc.take_snapshot().dump(end_file))
sys.argv = ["pipeline", *sys.argv[3:]]
runpy.run_module("pipeline", run_name="__main__")
"""


def compare(older: Path, newer: Path, top: int = 10) -> None:
    import tracemalloc

    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    a = tracemalloc.Snapshot.load(str(older)).filter_traces(keep)
    b = tracemalloc.Snapshot.load(str(newer)).filter_traces(keep)
    for stat in b.compare_to(a, "traceback")[:top]:
        print(f"{stat.size_diff / 1024:+9.0f} KiB {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format()[-10:]:
            print("   ", line)


def manifest_done(out: Path) -> int:
    with contextlib.closing(sqlite3.connect(out / ".ocr-pipeline" / "manifest.sqlite3")) as db:
        return db.execute("SELECT COUNT(*) FROM documents WHERE state='done'").fetchone()[0]


def report_costs(out: Path) -> float:
    return sum(json.loads(p.read_text()).get("cost", 0.0)
               for p in (out / ".ocr-pipeline" / "runs").glob("*.json"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--points", default="all", help="all, none, or comma-separated")
    parser.add_argument("--job-lines", type=int, help="batch.max_requests_per_job (default 10,000)")
    parser.add_argument("--trace", type=Path, help="folder for tracemalloc snapshots of the last run")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("OLDER", "NEWER"),
                        help="print what snapshot NEWER holds more than OLDER, and exit")
    opts = parser.parse_args()
    if opts.compare:
        compare(*opts.compare)
        return
    points = POINTS if opts.points == "all" else [p for p in opts.points.split(",") if p != "none"]
    banner(f"batch mode: {opts.docs:,} one-page documents, SIGKILL at {len(points)} crash points")
    tree = SCRATCH / f"batch-in-{opts.docs}"
    make_tree(tree, opts.docs)
    server = await start_fake_server(FakeServerOptions(api_key="bench", cheap=True))
    fake = batch_of(server)
    fake.behaviour.speed = 20_000
    config = SCRATCH / "batch.yaml"
    config.write_text("batch:\n  poll_interval_min: 0.2\n  poll_interval_max: 1\n"
                      + (f"  max_requests_per_job: {opts.job_lines}\n" if opts.job_lines else ""))
    env = {**os.environ, "MISTRAL_API_KEY": "bench"}
    rows = []
    try:
        for point in points or ["(none)"]:
            out = SCRATCH / f"batch-out-{opts.docs}"
            shutil.rmtree(out, ignore_errors=True)
            fake.by_custom_id.clear()
            args = ["run", "--backend", "mistral", "--endpoint", server.url, "--input", str(tree),
                    "--output", str(out), "--mode", "batch", "--config", str(config),
                    "--progress", "off"]
            kill_code, kill_s, kill_rss = (None, 0.0, 0)
            if point != "(none)":
                kill_code, kill_s, kill_rss = await asyncio.to_thread(
                    run, args, {**env, "OCR_PIPELINE_CRASH_AT": f"{point}:1"})
            trace = None
            if opts.trace:
                opts.trace.mkdir(parents=True, exist_ok=True)
                trace = [str(opts.trace / f"{kind}-{opts.docs}") for kind in ("peak", "end")]
            code, seconds, rss = await asyncio.to_thread(run, args, env, trace)
            twice = sum(1 for n in fake.by_custom_id.values() if n > 1)
            cost = report_costs(out)
            rows.append({
                "crash point": point, "killed": kill_code, "resume exit": code,
                "docs done": manifest_done(out), "answered twice": twice,
                "cost $": round(cost, 4), "sync price $": opts.docs * SYNC_PRICE / 1000,
                "cost/sync": round(cost / (opts.docs * SYNC_PRICE / 1000), 3),
                "peak RSS MiB (killed, resume)": f"{kill_rss}, {rss}",
                "seconds (killed, resume)": f"{kill_s:.1f}, {seconds:.1f}",
            })
            print(json.dumps(rows[-1]), flush=True)
    finally:
        await server.stop()
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    asyncio.run(main())
