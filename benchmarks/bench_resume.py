"""Resume scan: a second run over a tree whose every document is already done; how long until the
pipeline knows there is nothing to do?

    .venv/bin/python benchmarks/bench_resume.py                  # 100,000 documents (100 x 1,000)
    .venv/bin/python benchmarks/bench_resume.py --short          # 3,000 documents (as bench_memory --short)
    .venv/bin/python benchmarks/bench_resume.py --docs 20000 --profile
    .venv/bin/python benchmarks/bench_resume.py --docs 10000 --touched   # every mtime moved

The populated output is made once by a first run through the cheap fake server and cached beside
the tree under /tmp (`bench_memory.py` makes the same one). Each second run is the CLI as an
operator runs it from cron (a child process: interpreter start-up included), twice in a row;
the figure is wall time, with the run's own `duration_s` from its report beside it.
Target: under 15 s for 100,000 documents (size+mtime fast path, no re-hash, batched SQLite).

--touched moves every file's mtime before each second run (an archive copied again, contents
the same): the run must read and hash every file to find it unchanged, and write its new stat
to the manifest. Those writes are what the figure is about (one transaction per batch of the
plan, not per file). It changes the mtimes of the benchmark's own cached tree, nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    SCRATCH,
    FakeServerProcess,
    Results,
    banner,
    pipeline_argv,
    populated,
    py_spy_top,
    run_pipeline,
    shown,
    table,
    tree,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--docs", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="py-spy profile of a second run")
    ap.add_argument("--touched", action="store_true",
                    help="move every file's mtime before each second run (same contents)")
    ap.add_argument("--json")
    args = ap.parse_args()
    docs = args.docs or (3_000 if args.short else 100_000)
    banner(f"resume scan: second run over {docs:,} documents already done")
    inp = tree(docs, 1, folders=max(1, docs // 1000))
    out, first, command = populated(inp)
    if first is not None:
        print(f"   populated: {command}  ({first.wall_s:.1f} s, exit {first.returncode})")
    else:
        print(f"   populated output reused from the cache: {out}")
    res = Results("resume")
    rows = []
    with FakeServerProcess("--cheap") as server:
        argv = pipeline_argv(server.url, inp, out, workers=32, max_in_flight=64)
        print(f"   second run: {shown(argv)}")
        for attempt in (1, 2):
            if args.touched:
                touch_every_file(inp)
            run = run_pipeline(server.url, inp, out, workers=32, max_in_flight=64)
            rep = run.report or {}
            st = server.stats()
            row = {"run": attempt, "exit": run.returncode, "documents": docs,
                   "touched": args.touched,
                   "plan": ",".join(f"{k}={v}" for k, v in (rep.get("plan") or {}).items()),
                   "requests_to_server": st["requests"], "wall_s": run.wall_s,
                   "run_duration_s": rep.get("duration_s"), "cpu_s": run.cpu_s,
                   "peak_rss_mb": run.maxrss_mb}
            rows.append(row)
            res.details.append(row | {"command": shown(argv)})
        if args.profile:
            if args.touched:
                touch_every_file(inp)
            print("   py-spy profile of a second run:")
            print(py_spy_top(argv, SCRATCH / f"resume-{docs}"))
    print(table(rows, list(rows[0])))
    best = min(rows, key=lambda r: r["wall_s"])
    worst = max(rows, key=lambda r: r["wall_s"])
    scale = 100_000 / docs
    # Extrapolate the scan, not the interpreter start-up: wall = start-up + the run's duration.
    fixed = max(0.0, worst["wall_s"] - (worst["run_duration_s"] or 0.0))
    estimate = fixed + (worst["wall_s"] - fixed) * scale
    note = "" if docs == 100_000 else (
        f"{docs:,} docs; start-up {fixed:.1f} s + scan x{scale:.0f} -> {estimate:.1f} s per 100,000")
    what = "touched (same contents)" if args.touched else "done"
    res.add(f"resume scan, {docs:,} {what} documents (slower of 2 runs)", worst["wall_s"], "s",
            "" if args.touched else "< 15 s per 100,000",
            None if args.touched else estimate < 15, note)
    res.add("per document", 1e6 * best["wall_s"] / docs, "us")
    res.add("peak RSS of the second run", worst["peak_rss_mb"], "MB", "< 300 MB",
            worst["peak_rss_mb"] < 300)
    res.print_figures()
    res.dump(args.json)


def touch_every_file(root: Path) -> None:
    """A new mtime for every file of the benchmark's tree (its contents stay as they are)."""
    stamp = time.time_ns()
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(folder, name), ns=(stamp, stamp))


if __name__ == "__main__":
    main()
