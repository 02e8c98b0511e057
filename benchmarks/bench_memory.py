"""Memory: peak RSS of the pipeline process on one large PDF and on a tree of many small files, at
two sizes each, so that "independent of size" can be read off the figures.

    .venv/bin/python benchmarks/bench_memory.py            # 500 / 2,000-page PDF; 10,000 / 100,000 files
    .venv/bin/python benchmarks/bench_memory.py --short    # 500 / 1,000-page PDF; 1,000 / 3,000 files
    .venv/bin/python benchmarks/bench_memory.py --tree-sizes 10000 30000   # within ~10 min

At 230-285 documents/s (10,000 / 30,000 files, 2026-11-26), the 100,000-file first run alone
should take 6-7 min on 2 shared cores (it took 15 min on the older code).

The server is the cheap fake server (own process, no latency, no limit); the pipeline is a child
process whose peak RSS is its ru_maxrss (wait4). Large PDFs use the Mistral defaults (50-page
chunks, workers 8, 32 in flight); trees use workers 32 and 64 in flight. The tree runs are the
populating runs whose outputs `bench_resume.py` reuses (cached beside the tree under /tmp).
Target: under 300 MB for both, independent of size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CACHE,
    FakeServerProcess,
    Results,
    banner,
    big_pdf,
    fresh_dir,
    pipeline_argv,
    populated,
    run_pipeline,
    shown,
    table,
    tree,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--pdf-sizes", type=int, nargs="*", default=None)
    ap.add_argument("--tree-sizes", type=int, nargs="*", default=None)
    ap.add_argument("--json")
    args = ap.parse_args()
    pdf_sizes = args.pdf_sizes or ([500, 1000] if args.short else [500, 2000])
    tree_sizes = args.tree_sizes if args.tree_sizes is not None else (
        [1000, 3000] if args.short else [10_000, 100_000])
    banner("memory: peak RSS of the pipeline process (cheap fake server in its own process)")
    res = Results("memory")
    rows = []
    with FakeServerProcess("--cheap") as server:
        print(f"   server: {server.command()}")
        for pages in pdf_sizes:
            pdf = big_pdf(pages)
            inp = CACHE / f"one-{pages}p"
            if not inp.exists():
                inp.mkdir(parents=True)
                (inp / pdf.name).symlink_to(pdf)
            # Symlinks are not followed by default: give the tree a real file (hard link).
            target = inp / pdf.name
            if target.is_symlink():
                target.unlink()
                target.hardlink_to(pdf)
            out = fresh_dir(f"memory-{pages}p")
            run = run_pipeline(server.url, inp, out)
            rep = run.report or {}
            row = {"input": f"one PDF, {pages:,} pages ({pdf.stat().st_size / 1e6:.1f} MB)",
                   "exit": run.returncode, "pages": rep.get("pages_done"),
                   "wall_s": run.wall_s, "peak_rss_mb": run.maxrss_mb}
            rows.append(row)
            res.details.append(row | {"command": shown(pipeline_argv(server.url, inp, out))})
            print(f"   {row['input']}: {shown(pipeline_argv(server.url, inp, out))}", flush=True)
    for docs in tree_sizes:
        folders = max(1, docs // 1000)
        inp = tree(docs, 1, folders=folders)
        out, run, command = populated(inp, fresh=True)
        assert run is not None
        rep = run.report or {}
        row = {"input": f"tree, {docs:,} 1-page PDFs in {folders} folders", "exit": run.returncode,
               "pages": rep.get("pages_done"), "wall_s": run.wall_s,
               "peak_rss_mb": run.maxrss_mb}
        rows.append(row)
        res.details.append(row | {"command": command})
        print(f"   {row['input']}: {command}  ({docs / run.wall_s:.0f} documents/s)", flush=True)
    print(table(rows, ["input", "exit", "pages", "wall_s", "peak_rss_mb"]))
    for row in rows:
        res.add(f"peak RSS, {row['input']}", row["peak_rss_mb"], "MB", "< 300 MB",
                row["peak_rss_mb"] < 300)
    pdf_rows, tree_rows = rows[: len(pdf_sizes)], rows[len(pdf_sizes):]
    for group, what in ((pdf_rows, "pages"), (tree_rows, "documents")):
        if len(group) >= 2:
            a, b = group[0], group[-1]
            res.add(f"RSS growth from the smaller to the larger {what} case",
                    b["peak_rss_mb"] - a["peak_rss_mb"], "MB", "~0 (independent of size)", None,
                    f"{a['peak_rss_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB")
    res.print_figures()
    res.dump(args.json)


if __name__ == "__main__":
    main()
