"""Soak: thousands of documents, a 20% mixed fault rate and random SIGKILLs, then the ledger.

Prints documents done, failed by category, duplicate chunk sends beyond those in flight at a kill
(must be 0) and pages lost (must be 0).

    .venv/bin/python benchmarks/soak.py                      # 2,000 documents, 5 kills
    .venv/bin/python benchmarks/soak.py --docs 300 --kills 3  # short
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.fakeserver import FakeServerOptions, start_fake_server  # noqa: E402
from tests.pdfgen import page_text, write_pdf  # noqa: E402

KEY = "soak-key-not-secret"


def make_tree(root: Path, docs: int, rng: random.Random) -> dict[str, int]:
    expected: dict[str, int] = {}
    for i in range(docs):
        rel = f"batch{i % 20:02}/doc{i:05}.pdf"
        pages = rng.choice([1, 1, 2, 3, 5, 12])
        write_pdf(root / rel, rel, pages)
        expected[rel] = pages
    return expected


def persisted_chunks(manifest: Path) -> int:
    if not manifest.exists():
        return 0
    with sqlite3.connect(manifest) as db:
        return db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]


async def run_once(args: list[str], env: dict[str, str], kill_after: float | None) -> int | None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    if kill_after is None:
        return await proc.wait()
    try:
        return await asyncio.wait_for(proc.wait(), kill_after)
    except TimeoutError:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    work = Path(tempfile.mkdtemp(prefix="ocr-soak-"))
    inp, out = work / "in", work / "out"
    expected = make_tree(inp, opts.docs, rng)
    server = await start_fake_server(FakeServerOptions(
        api_key=KEY, latency=0.01, latency_max=0.2, fault_rate=opts.fault_rate,
        faults=("429", "500", "502", "503", "504", "reset", "malformed", "wrong_shape"),
        retry_after=0, seed=opts.seed,
    ))
    env = {**os.environ, "MISTRAL_API_KEY": KEY}
    args = ["run", "--backend", "mistral", "--endpoint", server.url, "--input", str(inp),
            "--output", str(out), "--workers", "6", "--max-in-flight", "12",
            "--max-pages-per-request", "4", "--rps", "0", "--progress", "off", "--quiet"]
    manifest = out / ".ocr-pipeline/manifest.sqlite3"
    started = time.monotonic()
    allowed_duplicates = 0
    kills = 0
    for _ in range(opts.kills):
        code = await run_once(args, env, kill_after=rng.uniform(0.5, 4.0))
        if code is not None:
            break  # the run finished before its kill
        kills += 1
        await asyncio.sleep(0.3)  # let the server finish answering requests of the dead run
        # Answers the server gave that the dead run never committed may be paid for again.
        allowed_duplicates = server.stats.answered_ok - persisted_chunks(manifest)
    final = await run_once(args, env, kill_after=None)
    if final == 1:
        # Documents that met faults beyond their retry budget get the one more chance an
        # operator would give them with --retry-failed.
        final = await run_once([*args, "--retry-failed"], env, kill_after=None)
    seconds = time.monotonic() - started
    duplicates = sum(n - 1 for n in server.stats.ok_by_document.values() if n > 1)
    done = failed = pages_lost = lost_docs = 0
    by_category: dict[str, int] = {}
    with sqlite3.connect(manifest) as db:
        states = {p: (s, c) for p, s, c in
                  db.execute("SELECT path, state, error_category FROM documents")}
    for rel, pages in expected.items():
        state, category = states.get(rel, (None, None))
        if state == "done":
            done += 1
            data = json.loads((out / f"{rel}.json").read_text())
            present = [p for p in data["pages"] if page_text(rel, p["index"]) in p["markdown"]]
            pages_lost += pages - len(present)
        elif state == "failed":
            failed += 1
            by_category[category] = by_category.get(category, 0) + 1
        else:
            lost_docs += 1
    await server.stop()
    print(f"soak: {opts.docs} documents ({sum(expected.values())} pages), fault rate"
          f" {opts.fault_rate:.0%}, {kills} SIGKILLs, final exit {final}, {seconds:.0f} s")
    print(f"  documents done: {done}")
    print(f"  documents failed by category: {by_category or 'none'}")
    print(f"  documents neither done nor failed (lost): {lost_docs}")
    print(f"  requests: {server.stats.requests}, by status {server.stats.by_status}")
    print(f"  duplicate chunk answers: {duplicates}; in flight at a kill (allowed): "
          f"{allowed_duplicates}; beyond that: {max(0, duplicates - allowed_duplicates)}"
          " (must be 0)")
    print(f"  pages lost: {pages_lost} (must be 0)")
    print(f"  reproduce: .venv/bin/python benchmarks/soak.py --docs {opts.docs}"
          f" --kills {opts.kills} --fault-rate {opts.fault_rate} --seed {opts.seed}")


if __name__ == "__main__":
    asyncio.run(main())
