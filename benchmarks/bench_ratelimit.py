"""Rate-limit efficiency: a fake server enforcing R requests/s with 0.3-2 s latency; how close to R
does the pipeline run, and how many 429s does it collect on the way?

    .venv/bin/python benchmarks/bench_ratelimit.py                 # R = 10, 50, 200; 3 modes each
    .venv/bin/python benchmarks/bench_ratelimit.py --short         # R = 50; shorter windows
    .venv/bin/python benchmarks/bench_ratelimit.py --rates 200 --modes adaptive-no-headers

Modes, per R:
  configured           --rps R (the operator knows the limit)
  adaptive-headers     --rps 0: unlimited start, learns from 429s and x-ratelimit-limit-req-minute
  adaptive-no-headers  --rps 0 through a small reverse proxy (this script, --proxy) that strips
                       every x-ratelimit-* header: only 429 + Retry-After to learn from
Server (own process): `python -m pipeline fake-server --cheap --rps-limit R --latency 0.3
--latency-max 2`; pipeline (own process): max_in_flight = workers = max(32, 2.3 R), twice the
R x mean latency (1.15 s) needed, so latency is never the bottleneck. The tree has 2-page PDFs
(one request each). The server's counters are polled every 0.5 s; the steady window starts
`--warmup` seconds after the first answer and lasts `--measure` seconds, then the run is stopped
with SIGTERM (a clean, resumable stop). Achieved = answers in the window / window length.
Targets: >= 0.95 R and <= 2 429s per 100 requests adaptive; >= 0.98 R configured.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PY,
    ROOT,
    SCRATCH,
    FakeServerProcess,
    Results,
    banner,
    bench_env,
    fresh_dir,
    load,
    pipeline_argv,
    shown,
    stop_process,
    summarise_folded,
    table,
    tree,
    wait_child,
)

MODES = ("configured", "adaptive-headers", "adaptive-no-headers")
LAT_LOW, LAT_HIGH = 0.3, 2.0


# ---- the header-stripping proxy (runs as its own process) --------------------------------------
def serve_proxy(upstream: str) -> None:
    from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

    hop = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}

    async def main() -> None:
        session = ClientSession(connector=TCPConnector(limit=0),
                                timeout=ClientTimeout(total=600), auto_decompress=False)

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in hop and k.lower() != "host"}
            async with session.request(request.method, upstream + request.path_qs,
                                       data=body, headers=headers) as resp:
                data = await resp.read()
                out = {k: v for k, v in resp.headers.items()
                       if k.lower() not in hop and not k.lower().startswith("x-ratelimit-")}
                return web.Response(status=resp.status, body=data, headers=out)

        app = web.Application(client_max_size=100 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"proxy listening on http://127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()
        await session.close()

    asyncio.run(main())


class Proxy:
    def __init__(self, upstream: str) -> None:
        self.proc = subprocess.Popen(
            [PY, __file__, "--proxy", upstream], cwd=ROOT, env=bench_env(),
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def stop(self) -> None:
        stop_process(self.proc)


# ---- one measured run -------------------------------------------------------------------------
def measure(server: FakeServerProcess, url: str, rate: float, mode: str, inp: Path,
            warmup: float, window: float, profile: bool = False) -> dict[str, object]:
    in_flight = max(32, math.ceil(rate * 2.3))
    rps = rate if mode == "configured" else 0
    out = fresh_dir(f"ratelimit-{rate:g}-{mode}")
    argv = pipeline_argv(url, inp, out, rps=rps, workers=in_flight, max_in_flight=in_flight)
    server.reset()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=bench_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    spy = None
    if profile:
        raw = SCRATCH / f"ratelimit-{rate:g}-{mode}.folded"
        raw.unlink(missing_ok=True)
        spy = subprocess.Popen(
            [str(Path(PY).parent / "py-spy"), "record", "--pid", str(proc.pid), "--rate", "100",
             "--format", "raw", "--output", str(raw), "--duration", str(int(warmup + window + 5))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[float, int, int, int]] = []  # t, answered, 429s, requests
    first_ok = None
    w0 = w1 = None
    deadline = started + warmup + window + 600
    while time.perf_counter() < deadline:
        time.sleep(0.5)
        st = server.stats()
        t = time.perf_counter()
        sample = (t, st["answered_ok"], st["by_status"].get("429", 0), st["requests"])
        samples.append(sample)
        if first_ok is None and sample[1] > 0:
            first_ok = t
        if first_ok is not None and w0 is None and t >= first_ok + warmup:
            w0 = sample
        if w0 is not None and t >= w0[0] + window:
            w1 = sample
            break
        if proc.poll() is not None:
            break  # the tree ran out (too small for this rate and window)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, wall, usage = wait_child(proc, started)
    if spy is not None:
        spy.wait()
        print(f"   py-spy profile of the pipeline, R={rate:g} {mode}:")
        print(summarise_folded(raw, 20) if raw.exists() else "   (no profile)")
    final = server.stats()
    if w0 is None or w1 is None:
        w0, w1 = samples[0], samples[-1]
        note = "tree exhausted before the window ended"
    else:
        note = ""
    span = w1[0] - w0[0]
    ok, r429, req = w1[1] - w0[1], w1[2] - w0[2], w1[3] - w0[3]
    t_end = w1[0]
    whole_ok = w1[1]
    whole_span = t_end - (first_ok or started)
    return {
        "R": rate,
        "mode": mode,
        "in_flight": in_flight,
        "achieved_rps": ok / span,
        "ratio": ok / span / rate,
        "429/100": 100 * r429 / max(req, 1),
        "whole_ratio": whole_ok / whole_span / rate if whole_span > 0 else 0.0,
        "whole_429/100": 100 * w1[2] / max(w1[3], 1),
        "requests": w1[3],
        "server_max_conc": final.get("max_concurrent"),
        "window_s": span,
        "load": load(),
        "pipeline_cores": (usage.ru_utime + usage.ru_stime) / wall,
        "note": note,
        "command": shown(argv),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="R = 50 only, short windows (~60 s)")
    ap.add_argument("--rates", type=float, nargs="*", default=None)
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--warmup", type=float, default=None, help="seconds left out at the start")
    ap.add_argument("--measure", type=float, default=None, help="seconds of steady window")
    ap.add_argument("--profile", action="store_true", help="py-spy on the pipeline of each run")
    ap.add_argument("--proxy", metavar="UPSTREAM", help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.proxy:
        serve_proxy(args.proxy)
        return
    rates = args.rates or ([50.0] if args.short else [10.0, 50.0, 200.0])
    warmup = args.warmup if args.warmup is not None else (4.0 if args.short else 10.0)
    window = args.measure if args.measure is not None else (8.0 if args.short else 30.0)
    banner("rate-limit efficiency (fake server with R req/s and 0.3-2 s latency, own process)")
    print(f"   steady window: {window:g} s after {warmup:g} s of warm-up from the first answer")
    docs = int(max(rates) * (warmup + window + 10) * 1.3)
    docs = max(1000, -(-docs // 1000) * 1000)
    inp = tree(docs, 2, folders=max(1, docs // 1000))
    res = Results("ratelimit")
    rows = []
    for rate in rates:
        with FakeServerProcess("--cheap", "--rps-limit", f"{rate:g}", "--latency", str(LAT_LOW),
                               "--latency-max", str(LAT_HIGH)) as server:
            print(f"   server: {server.command()}", flush=True)
            for mode in args.modes:
                proxy = Proxy(server.url) if mode == "adaptive-no-headers" else None
                try:
                    row = measure(server, proxy.url if proxy else server.url, rate, mode, inp,
                                  warmup, window, args.profile)
                finally:
                    if proxy:
                        proxy.stop()
                print(f"   R={rate:g} {mode}: ratio {row['ratio']:.3f},"
                      f" 429/100 {row['429/100']:.2f}  ({row['command']})", flush=True)
                rows.append(row)
                res.details.append(row)
    cols = ["R", "mode", "in_flight", "achieved_rps", "ratio", "429/100", "whole_ratio",
            "whole_429/100", "requests", "server_max_conc", "pipeline_cores", "load", "note"]
    print(table(rows, cols))
    for row in rows:
        configured = row["mode"] == "configured"
        need = 0.98 if configured else 0.95
        ok_ratio = row["ratio"] >= need
        ok_429 = row["429/100"] <= 2.0
        res.add(f"R={row['R']:g} {row['mode']}: achieved / R", row["ratio"], "x R",
                f">= {need}", ok_ratio)
        res.add(f"R={row['R']:g} {row['mode']}: 429s per 100 requests (steady)",
                row["429/100"], "per 100", "<= 2", ok_429,
                f"whole run incl. warm-up: {row['whole_429/100']:.2f}")
    res.print_figures()
    res.dump(args.json)


if __name__ == "__main__":
    main()
