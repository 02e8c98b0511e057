"""The aiohttp application: the OCR route (auth, rate limit, faults, validation, answer) and
the control routes `/_stats`, `/_reset`, `/health`."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import random
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline.fakeserver import documents, faults
from pipeline.fakeserver.answers import ocr_response
from pipeline.fakeserver.documents import DocumentError, Page
from pipeline.fakeserver.latency import LatencyModel
from pipeline.fakeserver.options import ANSWER_FAULTS, FakeServerOptions, is_status_fault
from pipeline.fakeserver.ratelimit import Limiter, make_limiter, retry_after_headers
from pipeline.fakeserver.replies import Rejected, Reply, error, unauthorized
from pipeline.fakeserver.stats import Stats
from pipeline.fakeserver.validation import OCRCall, parse_request

#: Largest accepted body: a 50 MB document grows by a third in base64, plus the JSON around it.
MAX_BODY_BYTES = 80 * 1024 * 1024
#: Bodies above this are parsed in a worker thread so the event loop keeps serving.
THREAD_PARSE_BYTES = 64 * 1024
OCR_ROUTES = ("/v1/ocr", "/providers/mistral/azure/ocr")


@dataclass
class ServerState:
    """Everything the handlers share; one per running server."""

    options: FakeServerOptions
    stats: Stats = field(default_factory=Stats)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    limiter: Limiter = field(init=False)
    rng: random.Random = field(init=False)
    latency: LatencyModel = field(init=False)

    def __post_init__(self) -> None:
        o = self.options
        self.limiter = make_limiter(o.rate_limit_mode, o.rps_limit, o.rpm_limit)
        self.rng = random.Random(o.seed)
        self.latency = LatencyModel(o)

    def reset(self) -> None:
        """Zero the counters, refill the rate-limit bucket, restart the fail_auth_after count."""
        self.stats.reset()
        self.limiter.reset()

    def minute_headers(self) -> dict[str, str]:
        """The x-ratelimit-*-req-minute headers when they are enabled, else none."""
        return self.limiter.minute_headers() if self.options.headers_enabled else {}

    def auth_revoked(self) -> bool:
        limit = self.options.fail_auth_after
        return limit is not None and self.stats.answered_ok >= limit


STATE_KEY = web.AppKey("fakeserver_state", ServerState)


def make_app(state: ServerState) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state
    for path in OCR_ROUTES:
        app.router.add_post(path, handle_ocr)
    app.router.add_get("/_stats", handle_stats)
    app.router.add_post("/_reset", handle_reset)
    app.router.add_get("/health", handle_health)
    from pipeline.fakeserver.batch import add_batch_routes  # files + batch jobs

    add_batch_routes(app, state.stats, state.options)
    return app


async def handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].stats.to_dict())


async def handle_reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.reset()
    return web.json_response(state.stats.to_dict())


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_ocr(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    state.stats.enter()
    number = state.stats.requests
    try:
        return await _handle_ocr(request, state, number)
    finally:
        state.stats.leave()


async def _handle_ocr(
    request: web.Request, state: ServerState, number: int
) -> web.StreamResponse:
    """Decide in the real service's order: auth, rate limit, faults, validation, answer.

    `number` is the request's 1-based number since the last reset (for fault_after).
    """
    stats, options = state.stats, state.options
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        stats.bytes_received += request.content_length or 0
        return _reply(state, error(413, f"request body is larger than {MAX_BODY_BYTES} bytes"))
    stats.bytes_received += len(body)

    if not _authorized(request, options.api_key):
        return _reply(state, unauthorized())
    if state.auth_revoked():
        return _reply(state, unauthorized(options.auth_fail_status))

    decision = state.limiter.acquire()
    if not decision.allowed:
        stats.rate_limited += 1
        headers = retry_after_headers(decision.wait, options.retry_after,
                                      options.retry_after_style)
        headers.update(state.minute_headers())
        return _reply(state, error(429, "Requests rate limit exceeded", headers=headers))
    stats.count_admitted(decision.at)
    stuck = options.is_stuck(stats.admitted)
    if stuck:
        stats.stuck += 1

    fault = faults.draw_fault(options, state.rng, number, sum(stats.faults_injected.values()))
    if fault is not None:
        stats.count_fault(fault)  # at once, so concurrent requests see fault_limit exactly
        if fault not in ANSWER_FAULTS:
            return await _inject(request, state, fault, stuck)

    try:
        call = await _parse(body)
        pages = await _pages(call, options.cheap)
    except Rejected as exc:
        return _reply(state, exc.reply)
    except DocumentError as exc:
        return _reply(state, error(400, str(exc)))

    answer = ocr_response(
        pages,
        model=call.model + options.model_suffix,
        doc_size=len(call.data),
        images_per_page=options.images_per_page,
        image_id_style=options.image_id_style,
        include_image_base64=call.include_image_base64,
        image_limit=call.image_limit,
        rich=dataclasses.replace(call.rich, bad_annotations=options.bad_annotations),
    )
    await _latency(state, len(pages), stuck)
    if state.auth_revoked():  # another request used up the last allowed answer meanwhile
        return _reply(state, unauthorized(options.auth_fail_status))
    if fault is not None:
        return await _spoil(request, state, fault, answer, call.sha256)
    response = web.json_response(answer, headers=state.minute_headers())
    # Written here, not by aiohttp after we return, so only answers that reached the
    # connection are counted as paid for.
    await response.prepare(request)
    await response.write_eof()
    stats.count_status("200")
    stats.count_ok(call.sha256, len(pages))
    return response


def _authorized(request: web.Request, api_key: str | None) -> bool:
    if api_key is None:
        return True
    expected = api_key.encode()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected):
        return True
    return hmac.compare_digest(request.headers.get("api-key", "").encode(), expected)


async def _parse(body: bytes) -> OCRCall:
    """Validate and decode the body; in a worker thread when it is big (JSON, base64, sha256)."""
    if len(body) > THREAD_PARSE_BYTES:
        return await asyncio.to_thread(parse_request, body)
    return parse_request(body)


async def _pages(call: OCRCall, cheap: bool) -> list[Page]:
    """The pages to answer; pypdf runs in a worker thread, cheap mode skips it."""
    if call.kind == "image":
        return [documents.image_page(call.data, call.sha256)]
    if not cheap:
        return await asyncio.to_thread(documents.pdf_pages, call.data, call.pages)
    count = documents.cheap_pdf_page_count(call.data)
    if count is None:
        count = await asyncio.to_thread(documents.pdf_page_count, call.data)
    return documents.cheap_pages(count, call.pages)


async def _latency(state: ServerState, pages: int = 0, stuck: bool = False) -> None:
    """Wait the service time of an admitted request (never blocking the event loop)."""
    delay = state.latency.service_time(pages, stuck)
    if delay > 0:
        await asyncio.sleep(delay)


async def _spoil(
    request: web.Request, state: ServerState, kind: str, answer: dict[str, Any], sha256: str
) -> web.StreamResponse:
    """Deliver a real answer badly: cut off by a reset, dribbled out, or missing a page."""
    stats = state.stats
    headers = state.minute_headers()
    if kind == "short":
        answer["pages"] = answer["pages"][:-1]
        answer["usage_info"]["pages_processed"] = len(answer["pages"])
        response = web.json_response(answer, headers=headers)
        await response.prepare(request)
        await response.write_eof()
        stats.count_status("200")  # an answer, but not a valid one: not in ok_by_document
        return response
    body = json.dumps(answer).encode("utf-8")
    stream = web.StreamResponse(status=200, headers=headers)
    stream.content_type = "application/json"
    stream.content_length = len(body)
    await stream.prepare(request)
    if kind == "cut":
        await stream.write(body[: len(body) // 2])
        await asyncio.sleep(faults.CUT_PAUSE)  # the client has started reading the body
        stats.count_status("cut")
        faults.reset_connection(request)
        return stream
    assert kind == "trickle", kind
    pieces = faults.TRICKLE_PIECES
    step = -(-len(body) // pieces)
    try:
        for start in range(0, len(body) - step, step):
            await stream.write(body[start:start + step])
            await asyncio.sleep(state.options.trickle_seconds / pieces)
        await stream.write_eof(body[-(len(body) % step or step):])
    except ConnectionError:  # the client gave up waiting: nothing was delivered
        return stream
    stats.count_status("200")
    stats.count_ok(sha256, len(answer["pages"]))
    return stream


async def _inject(
    request: web.Request, state: ServerState, kind: str, stuck: bool = False
) -> web.StreamResponse:
    stats = state.stats
    if kind == "hang":
        stats.count_status("hang")
        await faults.hang(request, state.stopping)
        return web.Response()  # never reaches the client: the connection is gone
    await _latency(state, 0, stuck)
    if kind == "reset":
        stats.count_status("reset")
        faults.reset_connection(request)
        return web.Response()
    if kind == "malformed":
        stats.count_status("200")
        return web.Response(body=faults.MALFORMED_BODY, content_type="application/json")
    if kind == "wrong_shape":
        stats.count_status("200")
        return web.json_response(faults.wrong_shape_body(state.options))
    assert is_status_fault(kind), kind
    return _reply(state, faults.status_reply(kind, state.options))


def _reply(state: ServerState, reply: Reply) -> web.Response:
    state.stats.count_status(str(reply.status))
    if reply.is_text:
        headers = dict(reply.headers)
        content_type = headers.pop("Content-Type", "text/plain")
        return web.Response(status=reply.status, text=reply.body, headers=headers,
                            content_type=content_type)
    return web.Response(status=reply.status, text=json.dumps(reply.body),
                        headers=reply.headers, content_type="application/json")
