"""Several endpoints (`endpoints:`): two strict fake servers, each its own process, one limiter
each in the pipeline; the combined rate reached, and what happens when one server dies.

    .venv/bin/python benchmarks/bench_endpoints.py                 # both cases, ~2 minutes
    .venv/bin/python benchmarks/bench_endpoints.py --case steady --window 30

Servers: `python -m pipeline fake-server --cheap --rate-limit-mode sliding-window --rps-limit 10
--latency 0.5L --latency-max 1.5L --no-ratelimit-headers --seed N` (L = 2 s by default: uniform
latency in [1, 3] s), twice. The pipeline gets a config file with `backend: mistral` and an
`endpoints:` list naming both servers, nothing about rps, workers or in-flight (defaults).

- steady: one-page PDFs, enough that the run outlasts the window. Both servers' counters are
  polled every 0.5 s; the steady window starts max(5, 3 L) s after the first answer and lasts
  `--window` s, then the run is stopped with SIGTERM. Printed: the answers in the window over
  its length, over 2 x R = 20 (target >= 0.95), and 429s per 100 requests in the window.
- kill: `--kill-docs` one-page PDFs; the second server is SIGKILLed once it has answered
  `--kill-after` requests. Printed: the exit code, documents done, pages per endpoint (from the
  run report), the dead endpoint's failures and state, and that every document was done.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CACHE,
    PY,
    ROOT,
    WHOLE_SECOND_RETRY_AFTER,
    FakeServerProcess,
    Results,
    _publish,
    banner,
    bench_env,
    fresh_dir,
    last_report,
    load,
    page_text,
    pdf_bytes,
    shown,
)

RATE = 10  # each server's limit: at most R admissions in any sliding 1 s window
MODEL = "mistral-ocr-latest"


def unique_tree(docs: int) -> Path:
    """`docs` one-page PDFs, each of its own content (identical files would be answered once and
    shared, which is not the load this measures); cached under CACHE."""
    final = CACHE / f"unique-{docs}x1p"
    if final.exists():
        return final
    tmp = CACHE / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        (tmp / f"doc{i:06d}.pdf").write_bytes(pdf_bytes([page_text(f"doc{i}", 0)]))
    return _publish(tmp, final)


def server_args(latency: float, seed: int) -> list[str]:
    return ["--cheap", "--rate-limit-mode", "sliding-window", "--rps-limit", str(RATE),
            "--latency", f"{0.5 * latency:g}", "--latency-max", f"{1.5 * latency:g}",
            "--no-ratelimit-headers", "--seed", str(seed), *WHOLE_SECOND_RETRY_AFTER]


def write_config(folder: Path, urls: list[str]) -> Path:
    """Backend, model, and the endpoints with their keys: nothing about rate or concurrency."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "endpoints-bench.yaml"
    lines = ["backend: mistral", f"model: {MODEL}", "endpoints:"]
    for n, url in enumerate(urls):
        lines += [f"  - name: e{n}", f"    url: {url}", "    api_key: ${MISTRAL_API_KEY}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_pipeline(config: Path, inp: Path, out: Path,
                   log: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    argv = [PY, "-m", "pipeline", "run", "--config", str(config), "--input", str(inp),
            "--output", str(out), "--progress", "off", "--quiet"]
    with log.open("wb") as err:  # a file, not a pipe: a chatty child never blocks
        proc = subprocess.Popen(argv, cwd=ROOT, env=bench_env(), stdout=subprocess.DEVNULL,
                                stderr=err)
    return proc, argv


def sample(servers: list[FakeServerProcess]) -> dict[str, Any]:
    stats = [s.stats() for s in servers]
    return {"t": time.perf_counter(),
            "ok": sum(s["answered_ok"] for s in stats),
            "429": sum(s["rate_limited"] for s in stats),
            "requests": sum(s["requests"] for s in stats),
            "ok_each": [s["answered_ok"] for s in stats]}


def steady(latency: float, window: float, count: int = 2) -> dict[str, Any]:
    """`count` servers (2 for the target; 1 to compare with one endpoint alone)."""
    warmup = max(5.0, 3 * latency)
    docs = -(-math.ceil(count * RATE * (warmup + window + 15) * 1.2) // 100) * 100
    inp = unique_tree(docs)
    out = fresh_dir("endpoints-steady")
    scratch = fresh_dir("endpoints-steady-conf")
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(FakeServerProcess(*server_args(latency, n + 1)))
                   for n in range(count)]
        config = write_config(scratch, [s.url for s in servers])
        proc, argv = start_pipeline(config, inp, out, scratch / "pipeline.stderr")
        first_ok: float | None = None
        w0 = w1 = None
        deadline = time.perf_counter() + warmup + window + 300
        try:
            while time.perf_counter() < deadline and proc.poll() is None:
                time.sleep(0.5)
                now = sample(servers)
                if first_ok is None and now["ok"] > 0:
                    first_ok = now["t"]
                if first_ok is not None and w0 is None and now["t"] >= first_ok + warmup:
                    w0 = now
                if w0 is not None and now["t"] >= w0["t"] + window:
                    w1 = now
                    break
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        max1s = [s.stats()["max_admitted_1s"] for s in servers]
        command = (f"{servers[0].command()}  &&  (same, --seed 2 ...)  &&  {shown(argv)}")
    if w0 is None or w1 is None:
        raise SystemExit(f"the run ended before the steady window (exit {code}):"
                         f" {(scratch / 'pipeline.stderr').read_text()[-2000:]}")
    span = w1["t"] - w0["t"]
    requests = w1["requests"] - w0["requests"]
    return {
        "servers": count, "docs": docs, "window_s": span, "warmup_s": warmup,
        "rate": (w1["ok"] - w0["ok"]) / span,
        "achieved": (w1["ok"] - w0["ok"]) / span / (count * RATE),
        "429/100": 100 * (w1["429"] - w0["429"]) / max(requests, 1),
        "max1s": max1s,
        "rate_each": [round((b - a) / span, 2) for a, b in zip(w0["ok_each"], w1["ok_each"],
                                                                strict=True)],
        "exit": code, "command": command,
    }


def kill(latency: float, docs: int, kill_after: int) -> dict[str, Any]:
    inp = unique_tree(docs)
    out = fresh_dir("endpoints-kill")
    scratch = fresh_dir("endpoints-kill-conf")
    with FakeServerProcess(*server_args(latency, 1)) as a, FakeServerProcess(*server_args(latency, 2)) as b:
        config = write_config(scratch, [a.url, b.url])
        started = time.perf_counter()
        proc, argv = start_pipeline(config, inp, out, scratch / "pipeline.stderr")
        try:
            while proc.poll() is None and b.stats()["answered_ok"] < kill_after:
                time.sleep(0.1)
            b_answered = b.stats()["answered_ok"]
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait(10)
            killed_at = time.perf_counter() - started
            code = proc.wait(600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - started
        a_answered = a.stats()["answered_ok"]
        command = f"{a.command()}  &&  (same, --seed 2)  &&  {shown(argv)}"
    report = last_report(out) or {}
    figures = report.get("requests", {}).get("endpoints", {})
    outputs = len(list(out.rglob("*.pdf.json")))
    return {"docs": docs, "exit": code, "killed_at_s": killed_at, "wall_s": wall,
            "b_answered_before_kill": b_answered, "a_answered": a_answered,
            "documents_done": report.get("documents_done"),
            "documents_failed": report.get("documents_failed"), "outputs": outputs,
            "endpoints": figures, "command": command}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=("steady", "kill", "both"), default="both")
    ap.add_argument("--latency", type=float, default=2.0, help="L: latency uniform in [0.5 L, 1.5 L]")
    ap.add_argument("--window", type=float, default=30.0, help="seconds of steady window")
    ap.add_argument("--servers", type=int, default=2, help="steady case: endpoints (1 compares"
                    " with one endpoint alone)")
    ap.add_argument("--kill-docs", type=int, default=300)
    ap.add_argument("--kill-after", type=int, default=40, help="answers of the second server before"
                    " it is SIGKILLed")
    ap.add_argument("--json", help="write the figures here (for run_all.py)")
    args = ap.parse_args()
    banner(f"two strict fake servers (R = {RATE} each, sliding 1 s window), one `endpoints:` config")
    res = Results("endpoints")
    if args.case in ("steady", "both"):
        row = steady(args.latency, args.window, args.servers)
        res.details.append(row)
        target = args.servers * RATE
        print(f"   steady, {args.servers} endpoint(s): {row['rate']:.2f} answers/s over"
              f" {row['window_s']:.1f} s after a {row['warmup_s']:g} s warm-up ="
              f" {row['achieved']:.3f} of {target}; per server {row['rate_each']} /s;"
              f" 429s per 100 requests {row['429/100']:.2f}; most admissions in 1 s per server"
              f" {row['max1s']} (R = {RATE}); {row['docs']} documents; exit after SIGTERM"
              f" {row['exit']}", flush=True)
        print(f"      {row['command']}", flush=True)
        res.add(f"steady: achieved / {target}", row["achieved"], f"x {target}/s", ">= 0.95",
                row["achieved"] >= 0.95)
        res.add("steady: 429s per 100 requests", row["429/100"], "per 100")
        res.add("steady: max admissions in 1 s (worst server)", float(max(row["max1s"])),
                "requests", f"<= {RATE}", max(row["max1s"]) <= RATE)
    if args.case in ("kill", "both"):
        row = kill(args.latency, args.kill_docs, args.kill_after)
        res.details.append(row)
        dead, alive = row["endpoints"].get("e1", {}), row["endpoints"].get("e0", {})
        every = row["documents_done"] == row["docs"] == row["outputs"] and not row["documents_failed"]
        print(f"   kill: e1 SIGKILLed at {row['killed_at_s']:.1f} s after {row['b_answered_before_kill']}"
              f" answers; exit code {row['exit']}; documents done {row['documents_done']} of"
              f" {row['docs']} ({row['outputs']} outputs, {row['documents_failed']} failed) in"
              f" {row['wall_s']:.1f} s", flush=True)
        print(f"      e0: {alive.get('pages')} pages, {alive.get('failures')} failures, state"
              f" {alive.get('state')}; e1: {dead.get('pages')} pages, {dead.get('failures')}"
              f" failures, state {dead.get('state')} ({dead.get('reason')})", flush=True)
        print("      every document done, those after the kill through e0" if every else
              "      NOT every document done", flush=True)
        print(f"      {row['command']}", flush=True)
        res.add("kill: exit code", float(row["exit"]), "", "0", row["exit"] == 0)
        res.add("kill: documents done", float(row["documents_done"] or 0), "documents",
                f"= {row['docs']}", every)
    print(f"   load average at the end: {load():.2f}", flush=True)
    res.print_figures()
    res.dump(args.json)


if __name__ == "__main__":
    main()
