"""The limiter and the HTTP backend alone (no runner, no documents) against the strict fake
server: what the transport can reach when requests are always ready.

    .venv/bin/python benchmarks/bench_limiter_strict.py                    # R 10/50/200 x L 0.3/2/8
    .venv/bin/python benchmarks/bench_limiter_strict.py --rates 200 --latencies 2 --headers

The client keeps `limiter.demand()` requests ready (what the runner is asked to do) and sends
one one-page PDF per request through `call_with_retry`. Each cell runs `--seconds` (default
30); achieved / R is measured on the server's admissions after a warm-up of max(5, 2 L) s.
Compare with benchmarks/bench_strict_matrix.py (the whole pipeline) to see which part limits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import API_KEY, WHOLE_SECOND_RETRY_AFTER, FakeServerProcess  # noqa: E402

from pipeline.backends.mistral import MistralBackend  # noqa: E402
from pipeline.config import load_settings  # noqa: E402
from pipeline.errors import StopRequested  # noqa: E402
from pipeline.models import Chunk  # noqa: E402
from pipeline.transport.ratelimit import RateLimiter  # noqa: E402
from pipeline.transport.retry import EndpointHealth, RetryPolicy, RetryStats, call_with_retry  # noqa: E402
from tests.pdfgen import page_text, pdf_bytes  # noqa: E402


async def run_cell(url: str, rps: float | None, seconds: float) -> tuple[RateLimiter, RetryStats]:
    settings = load_settings(None, {"backend": "mistral", "endpoint": url},
                             env={"MISTRAL_API_KEY": API_KEY})
    limiter = RateLimiter(rps, None)
    backend = MistralBackend.from_settings(settings, rate_listener=limiter)
    data = pdf_bytes([page_text("bench.pdf", 0)])
    chunk = Chunk("bench.pdf", 0, 0, 1, "application/pdf", data, hashlib.sha256(data).hexdigest())
    stats = RetryStats()
    health = EndpointHealth(600.0)
    policy = RetryPolicy(6, 0.5, 5.0)

    async def one() -> None:
        with contextlib.suppress(StopRequested):
            await call_with_retry(backend, chunk, limiter, policy, health, stats)

    tasks: set[asyncio.Task[None]] = set()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            while limiter.demand() > 0:
                tasks.add(asyncio.create_task(one()))
                await asyncio.sleep(0)
            await asyncio.sleep(0.01)
            tasks = {t for t in tasks if not t.done()}
    finally:
        limiter.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await backend.close()
    return limiter, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="*", default=[10, 50, 200])
    parser.add_argument("--latencies", type=float, nargs="*", default=[0.3, 2.0, 8.0])
    parser.add_argument("--headers", action="store_true", help="server sends x-ratelimit headers")
    parser.add_argument("--rps", action="store_true", help="configure rps = R (a hard cap)")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    print("R    L    mode    achieved/R  429/100  max/1s  target  latency")
    for rate in args.rates:
        for latency in args.latencies:
            flags = ["--cheap", "--rate-limit-mode", "sliding-window", "--rps-limit", str(rate),
                     "--latency", str(0.5 * latency), "--latency-max", str(1.5 * latency),
                     "--seed", "1", "--ratelimit-headers" if args.headers else "--no-ratelimit-headers",
                     *WHOLE_SECOND_RETRY_AFTER]
            with FakeServerProcess(*flags) as server:
                warmup = max(5.0, 2 * latency)
                loop_task = run_cell(server.url, rate if args.rps else None, args.seconds)

                async def measured(task=loop_task, warm=warmup, srv=server):  # type: ignore[no-untyped-def]
                    runner = asyncio.create_task(task)
                    await asyncio.sleep(warm)
                    first = await asyncio.to_thread(srv.stats)
                    t0 = time.monotonic()
                    limiter, stats = await runner
                    last = await asyncio.to_thread(srv.stats)
                    return limiter, stats, first, last, time.monotonic() - t0

                limiter, stats, first, last, span = asyncio.run(measured())
                admitted = last["admitted"] - first["admitted"]
                refused = last["rate_limited"] - first["rate_limited"]
                mode = "rps" if args.rps else ("auto+h" if args.headers else "auto")
                print(f"{rate:<4} {latency:<4} {mode:<7} {admitted / span / rate:10.3f}"
                      f"  {100 * refused / max(1, admitted + refused):7.2f}  {last['max_admitted_1s']:6}"
                      f"  {limiter.target_in_flight:6}  {limiter.latency or 0:7.2f}", flush=True)


if __name__ == "__main__":
    main()
