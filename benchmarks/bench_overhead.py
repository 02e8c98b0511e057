"""Own overhead: pages/s and the pipeline process's own CPU-ms per page against a server that costs
nothing (cheap canned answers, zero latency, no limit), running in its own process.

    .venv/bin/python benchmarks/bench_overhead.py            # 200 x 50-page PDFs + 2,000 1-page PDFs
    .venv/bin/python benchmarks/bench_overhead.py --short    # 40 x 50-page + 500 1-page
    .venv/bin/python benchmarks/bench_overhead.py --profile  # also a py-spy profile of each case

CPU is the pipeline child's user+system time (wait4 rusage), so it covers discovery, plan, split,
encode, request, merge, store and manifest, plus interpreter start-up, which is printed apart and
subtracted for the "net" figure. Targets: < 2 CPU-ms per page with 10-page chunks; >= 300 pages/s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    SCRATCH,
    FakeServerProcess,
    Results,
    banner,
    fresh_dir,
    pipeline_argv,
    py_spy_top,
    run_pipeline,
    shown,
    startup_cpu_s,
    table,
    tree,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="smaller trees (~30 s)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--max-in-flight", type=int, default=32)
    ap.add_argument("--chunk-pages", type=int, default=10, help="max_pages_per_request")
    ap.add_argument("--profile", action="store_true", help="py-spy profile of each case")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    banner("own overhead (cheap fake server in its own process, zero latency, no limit)")
    cases = [("50-page PDFs", 40 if args.short else 200, 50),
             ("1-page PDFs", 500 if args.short else 2000, 1)]
    res = Results("overhead")
    startup = startup_cpu_s()
    print(f"   interpreter start-up + imports: {startup * 1000:.0f} CPU-ms (subtracted for 'net')")
    rows = []
    with FakeServerProcess("--cheap") as server:
        print(f"   server: {server.command()}")
        for label, docs, pages in cases:
            inp = tree(docs, pages)
            out = fresh_dir(f"overhead-{docs}x{pages}")
            server.reset()
            cpu0 = server.cpu_s()
            kw = dict(workers=args.workers, max_in_flight=args.max_in_flight,
                      extra=["--max-pages-per-request", str(args.chunk_pages)])
            run = run_pipeline(server.url, inp, out, **kw)
            server_cpu = server.cpu_s() - cpu0
            rep = run.report or {}
            total_pages = rep.get("pages_done", 0)
            st = server.stats()
            print(f"   {label}: {shown(pipeline_argv(server.url, inp, out, **kw))}"
                  f"  -> exit {run.returncode}")
            row = {
                "case": label,
                "docs": docs,
                "pages": total_pages,
                "requests": st["answered_ok"],
                "wall_s": run.wall_s,
                "run_s": rep.get("duration_s"),
                "pages/s": total_pages / run.wall_s,
                "cpu_ms/page": 1000 * run.cpu_s / max(total_pages, 1),
                "net_cpu_ms/page": 1000 * (run.cpu_s - startup) / max(total_pages, 1),
                "sys_share": run.sys_s / max(run.cpu_s, 1e-9),
                "cpu_ms/doc": 1000 * (run.cpu_s - startup) / docs,
                "server_cpu_s": server_cpu,
                "peak_rss_mb": run.maxrss_mb,
            }
            rows.append(row)
            res.details.append(row)
            if args.profile:
                prof_out = fresh_dir(f"overhead-prof-{docs}x{pages}")
                print(f"   py-spy profile of the {label} case:")
                print(py_spy_top(pipeline_argv(server.url, inp, prof_out, **kw),
                                 SCRATCH / f"overhead-{docs}x{pages}"))
    print(table(rows, list(rows[0])))
    chunked = rows[0]
    res.add("CPU per page, 10-page chunks (net of start-up)", chunked["net_cpu_ms/page"], "ms",
            "< 2 ms", chunked["net_cpu_ms/page"] < 2.0,
            f"{chunked['pages']:,} pages in {chunked['docs']} x 50-page PDFs")
    res.add("pages/s, 50-page PDFs in 10-page chunks", chunked["pages/s"], "pages/s",
            ">= 300", chunked["pages/s"] >= 300, "wall time of the child, start-up included")
    small = rows[1]
    res.add("pages/s, 1-page PDFs", small["pages/s"], "pages/s", ">= 300",
            small["pages/s"] >= 300, f"{small['net_cpu_ms/page']:.2f} CPU-ms per page")
    res.print_figures()
    res.dump(args.json)


if __name__ == "__main__":
    main()
