"""Run every benchmark and print one table of figures against their targets.

    .venv/bin/python benchmarks/run_all.py --short     # what `make bench` runs: ~2 min in all (100 s)
    .venv/bin/python benchmarks/run_all.py             # full sizes: ~25-30 min in all
    .venv/bin/python benchmarks/run_all.py --short --only overhead split

Each benchmark runs as its own process with `--json` and prints its own figures and the command
that reproduces them. `bench_local.py` (the offline engine) has no short mode and is left out:
run it on its own. Benchmark-only dependencies (mistralai, pikepdf, py-spy) are optional: the
benchmarks that need them say so and carry on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ROOT, table  # noqa: E402

BENCHES = ["overhead", "split", "strict_matrix", "sdk_side_by_side", "memory", "resume"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="short version of each (make bench)")
    ap.add_argument("--only", nargs="*", choices=BENCHES, default=None)
    ap.add_argument("--json", help="write every benchmark's figures to this file")
    args = ap.parse_args()
    started = time.perf_counter()
    figures: list[dict[str, object]] = []
    failed: list[str] = []
    everything: dict[str, object] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                     "short": args.short, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or BENCHES:
            out = Path(tmp) / f"{name}.json"
            argv = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(out)]
            if args.short:
                argv.insert(2, "--short")
            t0 = time.perf_counter()
            code = subprocess.run(argv, cwd=ROOT, check=False).returncode
            print(f"-- bench_{name}: exit {code}, {time.perf_counter() - t0:.0f} s\n", flush=True)
            if code != 0 or not out.exists():
                failed.append(name)
                continue
            data = json.loads(out.read_text())
            everything["results"].append(data)  # type: ignore[union-attr]
            figures += data["figures"]
    print(f"== all benchmarks ({'short' if args.short else 'full'}), "
          f"{time.perf_counter() - started:.0f} s")
    rows = [
        {"bench": f["bench"], "figure": f["name"], "value": round(float(f["value"]), 3),
         "unit": f["unit"], "target": f["target"],
         "met": "" if f["met"] is None else ("met" if f["met"] else "MISSED"), "note": f["note"]}
        for f in figures
    ]
    if rows:
        print(table(rows, ["bench", "figure", "value", "unit", "target", "met", "note"]))
    if failed:
        print(f"benchmarks that did not finish: {', '.join(failed)}")
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
