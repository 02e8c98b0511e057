"""Injected faults: which one (if any) a request gets, and what each looks like on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct

from aiohttp import web

from pipeline.fakeserver.options import FakeServerOptions
from pipeline.fakeserver.ratelimit import retry_after_headers
from pipeline.fakeserver.replies import Reply, error

HANG_SECONDS = 3600.0
#: A "cut" answer waits this long after half its body before the reset, so the client is reading.
CUT_PAUSE = 0.05
#: A "trickle" answer is written in this many pieces, spread over `trickle_seconds`.
TRICKLE_PIECES = 20
#: Cut in the middle of a string: no JSON parser can read it.
MALFORMED_BODY = b'{"pages": [{"index": 0, "markdown": "Fake OCR text cut off mid-sen'


def draw_fault(
    options: FakeServerOptions, rng: random.Random, number: int = 1, injected: int = 0
) -> str | None:
    """A fault kind with probability `fault_rate`, else None.

    `number` is the request's 1-based number, `injected` the faults injected so far: no fault
    for the first `fault_after` requests nor once `fault_limit` faults have been injected.
    """
    if options.fault_rate <= 0 or not options.faults:
        return None
    if number <= options.fault_after:
        return None
    if options.fault_limit is not None and injected >= options.fault_limit:
        return None
    if rng.random() >= options.fault_rate:
        return None
    return rng.choice(options.faults)


_REASONS = {
    408: "Request Timeout", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Time-out",
}


def status_reply(kind: str, options: FakeServerOptions) -> Reply:
    """The answer for an HTTP-status fault: by default shaped like what sends that status in
    the wild, or in the one body style `fault_body` asks for."""
    status = int(kind)
    headers = (
        retry_after_headers(1.0, options.retry_after, options.retry_after_style)
        if status == 429 else {}
    )
    style = options.fault_body
    if style == "default":
        if status in (502, 504):  # gateways answer HTML, not the API's JSON
            style = "html"
        elif status == 408:  # Azure's front proxy
            return Reply(status, "upstream request timeout",
                         {"Content-Type": "text/plain", **headers})
        else:
            style = "json"
    title = f"{status} {_REASONS.get(status, 'Error')}"
    if style == "html":
        return Reply(status, f"<html><head><title>{title}</title></head><body>"
                             f"<center><h1>{title}</h1></center><hr><center>nginx</center>"
                             "</body></html>\n",
                     {"Content-Type": "text/html", **headers})
    if style == "text":
        return Reply(status, f"{title}: fake-server injected fault\n",
                     {"Content-Type": "text/plain", **headers})
    return error(status, f"fake-server injected fault: HTTP {status}", headers=headers)


def wrong_shape_body(options: FakeServerOptions) -> dict[str, object]:
    """A 200 body that is valid JSON but no OCRResponse: `pages` is missing."""
    return {
        "model": "fake-wrong-shape" + options.model_suffix,
        "usage_info": {"pages_processed": 0, "doc_size_bytes": None},
        "document_annotation": None,
    }


def reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP reset, before any byte of the answer is written."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # SO_LINGER with a zero timeout turns close() into an RST.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def hang(request: web.Request, stopping: asyncio.Event) -> None:
    """Answer nothing until the server stops (or an hour passes), then drop the connection."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), HANG_SECONDS)
    reset_connection(request)
