"""`ocr-pipeline fake-server`: serve the fake Mistral OCR endpoint until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from pipeline.errors import ExitCode
from pipeline.fakeserver.options import LATENCY_DISTRIBUTIONS, FakeServerOptions
from pipeline.fakeserver.ratelimit import RATE_LIMIT_MODES, TOKEN_BUCKET


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-pipeline fake-server",
        description=(
            "A fake Mistral OCR endpoint (POST /v1/ocr and the Azure path "
            "/providers/mistral/azure/ocr) for testing configs without spending money. "
            "When MISTRAL_API_KEY is set, requests must carry 'Authorization: Bearer <key>' "
            "or 'api-key: <key>'. Counters: GET /_stats, POST /_reset."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    add("--latency", type=float, default=0.0, metavar="S", help="seconds added to each answer")
    add("--latency-max", type=float, default=None, metavar="S",
        help="if set, latency is uniform in [--latency, --latency-max] (lognormal: its cap)")
    add("--latency-distribution", choices=sorted(LATENCY_DISTRIBUTIONS), default="fixed",
        help="fixed (--latency), uniform [--latency, --latency-max], or lognormal with median "
             "--latency and shape --latency-sigma, capped at --latency-max (default 10 x median)")
    add("--latency-sigma", type=float, default=0.5, metavar="SIGMA",
        help="shape of the lognormal latency (default %(default)s)")
    add("--latency-per-page", type=float, default=0.0, metavar="S",
        help="seconds added per page answered (default %(default)s)")
    add("--rps-limit", type=float, default=0.0, metavar="R",
        help="requests per second before 429 (0 = no limit)")
    add("--rate-limit-mode", choices=sorted(RATE_LIMIT_MODES), default=TOKEN_BUCKET,
        help="token-bucket (bursts of R allowed) or sliding-window (strict: at most R "
             "admissions in any sliding 1 s window) (default %(default)s)")
    add("--rpm-limit", type=int, default=None, metavar="M",
        help="sliding-window mode: at most M admissions in any sliding 60 s window")
    add("--ratelimit-headers", action=argparse.BooleanOptionalAction, default=None,
        help="send x-ratelimit-{limit,remaining}-req-minute on 200s and 429s (default: on "
             "for token-bucket, off for sliding-window)")
    add("--stuck-first", type=int, default=0, metavar="N",
        help="the first N admitted requests take --stuck-seconds more to answer")
    add("--stuck-request", type=int, default=None, metavar="K",
        help="the K-th admitted request (1-based) takes --stuck-seconds more to answer")
    add("--stuck-seconds", type=float, default=30.0, metavar="H",
        help="how long a stuck request hangs before its answer (default %(default)s)")
    add("--retry-after", type=float, default=None, metavar="S",
        help="Retry-After sent with 429 instead of the computed wait")
    add("--retry-after-style", choices=("both", "seconds", "http-date"), default="both",
        help="429s carry Retry-After in seconds plus retry-after-ms ('both'), Retry-After in "
             "seconds only, or Retry-After as an HTTP date only")
    add("--fault-rate", type=float, default=0.0, metavar="P",
        help="probability (0-1) that a request gets a fault instead of an answer")
    add("--faults", default=",".join(FakeServerOptions.faults), metavar="KINDS",
        help="comma-separated fault kinds: HTTP statuses (408,500,502,503,504,...), "
             "reset, cut (reset mid-body), hang, trickle (slow answer), malformed, "
             "wrong_shape, short (a page missing) (default: %(default)s)")
    add("--fault-body", choices=("default", "json", "text", "html"), default="default",
        help="body of HTTP-status faults: as in the wild (default), or always JSON, text or HTML")
    add("--fault-after", type=int, default=0, metavar="N",
        help="no fault for the first N requests")
    add("--fault-limit", type=int, default=None, metavar="N",
        help="at most N faults in all, then every request is answered")
    add("--trickle-seconds", type=float, default=2.0, metavar="S",
        help="time a 'trickle' fault takes to write its answer (default %(default)s)")
    add("--fail-auth-after", type=int, default=None, metavar="N",
        help="after N successful answers every request gets 401 (key revoked)")
    add("--auth-fail-status", type=int, choices=(401, 403), default=401,
        help="status of the refusals after --fail-auth-after (default %(default)s)")
    add("--cheap", action="store_true",
        help="do not parse documents: canned text per page (for benchmarks)")
    add("--images-per-page", type=int, default=0, metavar="N",
        help="synthetic images added to each page")
    add("--image-id-style", choices=("normal", "hostile"), default="normal",
        help="'hostile' ids try to escape the output folder (../, absolute paths)")
    add("--model-suffix", default="", metavar="X", help="appended to the model in answers")
    add("--bad-annotations", action="store_true",
        help="annotations that break the requested JSON Schema (does the client notice?)")
    add("--seed", type=int, default=None, help="random seed for faults and latency")
    return parser


def options_from_args(args: argparse.Namespace) -> FakeServerOptions:
    return FakeServerOptions(
        api_key=os.environ.get("MISTRAL_API_KEY") or None,
        latency=args.latency,
        latency_max=args.latency_max,
        latency_distribution=args.latency_distribution,
        latency_sigma=args.latency_sigma,
        latency_per_page=args.latency_per_page,
        rps_limit=args.rps_limit,
        rate_limit_mode=args.rate_limit_mode,
        rpm_limit=args.rpm_limit,
        ratelimit_headers=args.ratelimit_headers,
        stuck_first=args.stuck_first,
        stuck_request=args.stuck_request,
        stuck_seconds=args.stuck_seconds,
        retry_after=args.retry_after,
        retry_after_style=args.retry_after_style,
        fault_rate=args.fault_rate,
        faults=tuple(k for k in args.faults.split(",") if k.strip()),
        fault_body=args.fault_body,
        fault_after=args.fault_after,
        fault_limit=args.fault_limit,
        trickle_seconds=args.trickle_seconds,
        fail_auth_after=args.fail_auth_after,
        auth_fail_status=args.auth_fail_status,
        cheap=args.cheap,
        images_per_page=args.images_per_page,
        image_id_style=args.image_id_style,
        model_suffix=args.model_suffix,
        bad_annotations=args.bad_annotations,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the fake server; returns the exit code (also for --help and usage errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        try:
            options = options_from_args(args)
        except ValueError as exc:
            parser.error(str(exc))
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    try:
        asyncio.run(_serve(options, args.host, args.port))
    except OSError as exc:  # e.g. address already in use
        print(f"fake-server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


SERVER_FULL_EVERY = 600.0


async def _serve(options: FakeServerOptions, host: str, port: int) -> None:
    from pipeline.fakeserver.server import start_fake_server
    from pipeline.gc_pacing import CollectorPacing

    server = await start_fake_server(options, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake-server listening on {server.url}", flush=True)
    # The server is a measuring instrument: it stamps each request when its handler runs, so
    # a stall of its own (a full collection over ~1,600 open requests took 0.1-0.2 s every
    # 7-11 s) stamps everything that arrived meanwhile at once, a burst no client sent and a
    # gateway stamping at arrival would not see. Paced as the pipeline paces its own, but with
    # a full pass every SERVER_FULL_EVERY s, not every minute: that pass (0.15-0.22 s at R = 200,
    # L = 8 s) fell at the same second as the pipeline's when both started together, inside the
    # benchmarks' window. Its memory stays bounded by the early pass on growth.
    collector = asyncio.create_task(CollectorPacing(full_every=SERVER_FULL_EVERY).run())
    try:
        await stop.wait()
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector  # it unfreezes on the way out
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
    s = server.stats
    print(
        f"fake-server stopped: {s.requests} requests, {s.answered_ok} answered, "
        f"{s.pages_answered} pages, by status {s.by_status}, "
        f"at most {s.max_admitted_1s} admitted in any 1 s window",
        file=sys.stderr,
    )
