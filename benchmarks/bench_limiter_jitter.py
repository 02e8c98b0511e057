"""How arrival jitter (a busy event loop, a loaded machine, the network) bounds the rate a strict
sliding-window server admits: the limiter in auto mode, no rate headers, on virtual time against
the simulated strict server of tests/test_limiter.py (exact sliding 1 s window; each request
reaches the server a uniform 0 to `jitter` seconds after it was sent).

    .venv/bin/python benchmarks/bench_limiter_jitter.py

Sends spaced evenly at a rate r arrive up to `jitter` seconds closer together, so a window of
1 s at the server can hold R + 1 of them unless r <= R x (1 - jitter): no client can stay at
0.95 R with 429s rare when its sends wander by 50 ms or more. Virtual time: the figures do not
depend on this machine's load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_limiter import simulate, steady_rate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", type=int, nargs="*", default=[10, 50, 200])
    ap.add_argument("--jitters", type=float, nargs="*", default=[0.002, 0.02, 0.05, 0.1])
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--seconds", type=int, default=240, help="virtual seconds of traffic")
    ap.add_argument("--cap", action="store_true",
                    help="also with `rps: R` (a hard cap at the server's limit)")
    args = ap.parse_args()
    print("== the limiter (auto, no headers; with --cap also rps R) vs arrival jitter, virtual time")
    print("   reproduce: .venv/bin/python benchmarks/bench_limiter_jitter.py"
          + (" --cap" if args.cap else ""))
    print(f"   latency uniform 0.5-1.5 x {args.latency:g} s; {args.seconds} s of traffic;"
          " steady rate measured after the first 30 s")
    print(f"{'mode':>5} {'R':>5} {'jitter_s':>9} {'achieved/R':>11} {'429/100':>8}"
          f" {'bound 1-jitter':>15} {'windows':>8} {'margin_s':>9}")
    for mode in ("auto", "cap") if args.cap else ("auto",):
        for rate in args.rates:
            for jitter in args.jitters:
                rps = rate if mode == "cap" else None
                out = simulate(rps, rate, args.latency, rate * args.seconds, jitter=jitter)
                achieved = steady_rate(out.server.admitted, skip=30) / rate
                windows = "/".join(str(w.count) for w in out.limiter.windows) or "-"
                print(f"{mode:>5} {rate:>5} {jitter:>9g} {achieved:>11.3f}"
                      f" {out.rejected_per_100:>8.2f} {1 - jitter:>15.3f} {windows:>8}"
                      f" {out.limiter.margin:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
