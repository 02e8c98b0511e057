"""Side by side, same run, same fake server, same tree: the pipeline against what a user writes from
the quickstart of Mistral's official SDK: a sequential `client.ocr.process` loop, and the same SDK
under asyncio.gather with a semaphore (`client.ocr.process_async`).

    .venv/bin/pip install mistralai                              # benchmark-only dependency
    .venv/bin/python benchmarks/bench_sdk_side_by_side.py        # 60 docs at 0.3-1 s, 300 docs at 0 s
    .venv/bin/python benchmarks/bench_sdk_side_by_side.py --short
    .venv/bin/python benchmarks/bench_sdk_side_by_side.py --strict   # issue 10's comparison
    .venv/bin/python benchmarks/bench_sdk_side_by_side.py --strict --docs 2000 --rounds 2

`--strict`: the fake server as a strict gateway (at most R = 20 admissions in any sliding 1 s
window, latency uniform 1-3 s, no rate headers), 400 one-page PDFs (`--docs`); the pipeline with
its defaults only (no rate, worker or in-flight flags) against the thirty lines a user writes with
the SDK: gather, 40 at once, the SDK's retries on (429 and 5xx, exponential backoff).

Every contender is a child process measured the same way (wall time, own CPU, peak RSS) and
writes the same outputs per document (`<rel>.json` with the response, `<rel>.md` with the pages'
markdown). The SDK loops neither fsync nor keep a manifest, so they do less than the pipeline.
Concurrency is the same for the pipeline (workers = max_in_flight = N) and the SDK semaphore (N).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL = "mistral-ocr-latest"


def sdk_client(url: str):  # type: ignore[no-untyped-def]
    try:
        from mistralai import Mistral  # mistralai 1.x
    except ImportError:
        from mistralai.client import Mistral  # mistralai 2.x and later
    return Mistral(api_key=os.environ.get("MISTRAL_API_KEY", "bench"), server_url=url)


def sdk_available() -> str | None:
    try:
        import importlib.metadata

        version = importlib.metadata.version("mistralai")
        sdk_client("http://127.0.0.1:9")
        return version
    except Exception:  # noqa: BLE001 - missing or broken: say so, do not fail
        return None


def documents(inp: Path) -> list[Path]:
    return sorted(inp.rglob("*.pdf"))


def document(path: Path) -> dict[str, str]:
    b64 = base64.b64encode(path.read_bytes()).decode()
    return {"type": "document_url", "document_url": f"data:application/pdf;base64,{b64}"}


def save(resp, inp: Path, out: Path, path: Path) -> None:  # type: ignore[no-untyped-def]
    target = out / path.relative_to(inp)
    target.parent.mkdir(parents=True, exist_ok=True)
    Path(str(target) + ".json").write_text(resp.model_dump_json())
    Path(str(target) + ".md").write_text("\n\n".join(p.markdown for p in resp.pages))


def sdk_sequential(url: str, inp: Path, out: Path) -> None:
    client = sdk_client(url)
    for path in documents(inp):
        resp = client.ocr.process(model=MODEL, document=document(path), include_image_base64=True)
        save(resp, inp, out, path)


def sdk_retries():  # type: ignore[no-untyped-def]
    """The SDK's own retry configuration: 429 and 5xx, backoff 0.5 s x 1.5 up to 60 s."""
    try:
        from mistralai.utils import BackoffStrategy, RetryConfig  # mistralai 1.x
    except ImportError:
        from mistralai.client.utils import BackoffStrategy, RetryConfig
    return RetryConfig("backoff", BackoffStrategy(500, 60_000, 1.5, 3_600_000), True)


def sdk_gather(url: str, inp: Path, out: Path, concurrency: int, retries: bool = False) -> None:
    async def main() -> None:
        client = sdk_client(url)
        sem = asyncio.Semaphore(concurrency)
        extra = {"retries": sdk_retries()} if retries else {}

        async def one(path: Path) -> None:
            async with sem:
                resp = await client.ocr.process_async(
                    model=MODEL, document=document(path), include_image_base64=True, **extra
                )
            save(resp, inp, out, path)

        await asyncio.gather(*(one(p) for p in documents(inp)))

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--strict", action="store_true", help="issue 10's strict-gateway comparison")
    ap.add_argument("--docs", type=int, default=400, help="--strict: one-page PDFs (400)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="--strict: rounds, the contenders' order alternating")
    ap.add_argument("--contender", choices=["sdk-seq", "sdk-async", "sdk-async-retries"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.contender == "sdk-seq":
        sdk_sequential(args.url, args.input, args.output)
        return
    if args.contender in ("sdk-async", "sdk-async-retries"):
        sdk_gather(args.url, args.input, args.output, args.concurrency,
                   retries=args.contender == "sdk-async-retries")
        return
    if args.strict:
        strict_side_by_side(args.json, args.docs, args.rounds)
        return

    from common import (
        PY,
        FakeServerProcess,
        Results,
        banner,
        fresh_dir,
        pipeline_argv,
        run_child,
        run_pipeline,
        shown,
        table,
        tree,
    )

    banner("side by side: pipeline vs the mistralai SDK (sequential, and gather + semaphore)")
    version = sdk_available()
    if version is None:
        print("   mistralai is not installed: `.venv/bin/pip install mistralai` (benchmark-only"
              " dependency). Nothing to compare; exiting.")
        return
    print(f"   mistralai {version}; concurrency {args.concurrency} for the pipeline and the"
          " SDK semaphore")
    n = args.concurrency
    scenarios = [
        ("latency 0.3-1 s", ["--latency", "0.3", "--latency-max", "1.0"], 16 if args.short else 60),
        ("zero latency", [], 100 if args.short else 300),
    ]
    res = Results("sdk_side_by_side")
    rows = []
    for label, server_args, docs in scenarios:
        inp = tree(docs, 10)
        with FakeServerProcess("--cheap", *server_args) as server:
            print(f"   [{label}] server: {server.command()}; tree {docs} x 10-page PDFs")
            runs = {}
            for name in ("pipeline", "sdk-seq", "sdk-async"):
                out = fresh_dir(f"sbs-{name}")
                server.reset()
                if name == "pipeline":
                    argv = pipeline_argv(server.url, inp, out, workers=n, max_in_flight=n)
                    run = run_pipeline(server.url, inp, out, workers=n, max_in_flight=n)
                else:
                    argv = [PY, __file__, "--contender", name, "--url", server.url,
                            "--input", str(inp), "--output", str(out),
                            "--concurrency", str(n)]
                    run = run_child(argv)
                st = server.stats()
                pages = st["pages_answered"]
                runs[name] = run
                row = {"scenario": label, "contender": name, "exit": run.returncode,
                       "pages": pages, "wall_s": run.wall_s, "pages/s": pages / run.wall_s,
                       "cpu_ms/page": 1000 * run.cpu_s / max(pages, 1),
                       "peak_rss_mb": run.maxrss_mb}
                rows.append(row)
                res.details.append(row | {"command": shown(argv)})
                print(f"   [{label}] {name}: {shown(argv)}", flush=True)
            p, s, a = runs["pipeline"], runs["sdk-seq"], runs["sdk-async"]
            rows[-3]["vs_sdk_seq"] = s.wall_s / p.wall_s
            rows[-3]["vs_sdk_async"] = a.wall_s / p.wall_s
            res.add(f"{label}: pipeline speed / SDK sequential", s.wall_s / p.wall_s, "x",
                    note=f"{p.wall_s:.1f} s vs {s.wall_s:.1f} s")
            res.add(f"{label}: pipeline speed / SDK gather({n})", a.wall_s / p.wall_s, "x",
                    note=f"{p.wall_s:.1f} s vs {a.wall_s:.1f} s")
            res.add(f"{label}: pipeline CPU / SDK gather CPU", p.cpu_s / max(a.cpu_s, 1e-9), "x",
                    note=f"{p.cpu_s:.2f} s vs {a.cpu_s:.2f} s (start-up included)")
    print(table(rows, ["scenario", "contender", "exit", "pages", "wall_s", "pages/s",
                       "cpu_ms/page", "peak_rss_mb", "vs_sdk_seq", "vs_sdk_async"]))
    res.print_figures()
    res.dump(args.json)


def strict_side_by_side(json_path: str | None, docs: int = 400, rounds: int = 1) -> None:
    """Issue 10: R = 20 strict window, L = 1-3 s, `docs` one-page PDFs; defaults vs SDK
    gather(40), `rounds` times, the order alternating (the SDK first in even rounds)."""
    from common import (
        PY,
        WHOLE_SECOND_RETRY_AFTER,
        FakeServerProcess,
        Results,
        banner,
        bench_env,
        fresh_dir,
        load,
        run_child,
        shown,
        table,
        tree,
    )

    banner("side by side at a strict gateway: pipeline defaults vs SDK gather(40) with retries")
    version = sdk_available()
    if version is None:
        print("   mistralai is not installed: `.venv/bin/pip install mistralai`. Exiting.")
        return
    rate = 20
    inp = tree(docs, 1)
    res = Results("sdk_strict")
    rows = []
    contenders = ("pipeline defaults", "sdk-async-retries")
    with FakeServerProcess("--cheap", "--rate-limit-mode", "sliding-window", "--rps-limit",
                           str(rate), "--latency", "1", "--latency-max", "3",
                           "--latency-distribution", "uniform", "--no-ratelimit-headers",
                           "--seed", "1", *WHOLE_SECOND_RETRY_AFTER) as server:
        print(f"   mistralai {version}; server: {server.command()}; {docs} one-page PDFs;"
              f" {rounds} round(s), load {load():.1f}")
        for round_no in range(rounds):
            order = contenders if round_no % 2 == 0 else contenders[::-1]
            for name in order:
                out = fresh_dir(f"sbs-strict-{name.split()[0]}")
                server.reset()
                if name == "pipeline defaults":
                    argv = [PY, "-m", "pipeline", "run", "--backend", "mistral", "--endpoint",
                            server.url, "--input", str(inp), "--output", str(out), "--progress",
                            "off", "--quiet"]
                else:
                    argv = [PY, __file__, "--contender", name, "--url", server.url, "--input",
                            str(inp), "--output", str(out), "--concurrency", "40"]
                run = run_child(argv, env=bench_env())
                st = server.stats()
                done = len(list(out.rglob("*.pdf.md")))
                row = {"round": round_no + 1, "contender": name, "exit": run.returncode,
                       "done": done, "wall_s": run.wall_s,
                       "achieved/R": st["answered_ok"] / run.wall_s / rate,
                       "429/100": 100 * st["rate_limited"] / max(st["requests"], 1),
                       "max/1s": st["max_admitted_1s"], "cpu_s": run.cpu_s,
                       "peak_rss_mb": run.maxrss_mb}
                rows.append(row)
                res.details.append(row | {"command": shown(argv)})
                print(f"   round {round_no + 1} {name}: {run.wall_s:.1f} s; {shown(argv)}",
                      flush=True)
        print(f"   load at the end {load():.1f}")
    pipe = [r for r in rows if r["contender"] == contenders[0]]
    sdk = [r for r in rows if r["contender"] == contenders[1]]
    ratios = [p["wall_s"] / s["wall_s"] for p, s in zip(pipe, sdk, strict=True)]
    res.add("pipeline defaults: wall time / SDK gather(40), per round", min(ratios), "x",
            note=" ".join(f"{r:.3f}" for r in ratios)
            + f" (whole runs of {docs} documents, start-up included)")
    res.add("pipeline defaults: 429s per 100", max(p["429/100"] for p in pipe), "",
            note="SDK: " + " ".join(f"{s['429/100']:.1f}" for s in sdk) + " per 100")
    print(table(rows, ["round", "contender", "exit", "done", "wall_s", "achieved/R", "429/100",
                       "max/1s", "cpu_s", "peak_rss_mb"]))
    res.print_figures()
    res.dump(json_path)


if __name__ == "__main__":
    main()
