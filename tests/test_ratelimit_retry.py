"""Rate discipline, the retry policy, and the Mistral HTTP backend against loopback servers."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gc
import hashlib
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from pipeline.backends.base import check_response
from pipeline.backends.mistral import MistralBackend, ocr_url, parse_retry_after
from pipeline.config import load_settings
from pipeline.config.groups import ServiceSettings
from pipeline.errors import (
    Category,
    FatalError,
    RejectedError,
    RetryableError,
    StopRequested,
)
from pipeline.models import Chunk
from pipeline.transport import on_wire
from pipeline.transport.ratelimit import RateInfo, RateLimiter
from pipeline.transport.retry import EndpointHealth, RetryPolicy, RetryStats, call_with_retry
from tests.conftest import serve_app
from tests.pdfgen import page_text, pdf_bytes

PDF = "application/pdf"
KEY = "sk-retry-test-51c0ffee-DO-NOT-LEAK"


# ---- virtual time for the limiter ---------------------------------------------------------------


class VirtualTime:
    """A clock that only moves when the limiter's pacer waits: spacing is checked exactly,
    instantly."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def clock(self) -> float:
        return self.now


@pytest.fixture
def vt(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    virtual = VirtualTime()

    async def virtual_sleep(self: RateLimiter, delay: float) -> None:
        """The pacer's sleep on the virtual clock: the time passes at once."""
        virtual.now += max(0.0, delay)
        await asyncio.sleep(0)

    monkeypatch.setattr(RateLimiter, "_sleep", virtual_sleep)
    return virtual


async def take(limiter: RateLimiter, vt: VirtualTime) -> float:
    async with limiter.slot():
        return vt.now


# ---- rate limiter ---------------------------------------------------------------------------------


async def test_requests_are_spaced_at_the_configured_rate(vt: VirtualTime) -> None:
    limiter = RateLimiter(4.0, 8, clock=vt.clock)
    times = [await take(limiter, vt) for _ in range(6)]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # four a second, each window of 1 s widened by the jitter margin
    assert gaps == pytest.approx([(1.0 + limiter.margin) / 4] * 5)


async def test_an_unlimited_limiter_never_waits(vt: VirtualTime) -> None:
    limiter = RateLimiter(0, 8, clock=vt.clock)
    times = [await take(limiter, vt) for _ in range(20)]
    assert times == [1000.0] * 20


async def test_concurrent_requests_are_spread_not_burst() -> None:
    limiter = RateLimiter(20.0, 10)
    entries: list[float] = []

    async def request() -> None:
        async with limiter.slot():
            entries.append(time.monotonic())

    await asyncio.gather(*(request() for _ in range(6)))
    assert len(entries) == 6
    # Six requests at 20/s span at least five intervals of 50 ms (generous margin).
    assert max(entries) - min(entries) >= 0.2


async def test_in_flight_requests_never_exceed_the_cap() -> None:
    limiter = RateLimiter(0, 3)
    active = 0
    peak = 0
    limiter_peak = 0

    async def request() -> None:
        nonlocal active, peak, limiter_peak
        async with limiter.slot():
            active += 1
            peak = max(peak, active)
            limiter_peak = max(limiter_peak, limiter.in_flight)
            await asyncio.sleep(0.005)
            active -= 1

    await asyncio.gather(*(request() for _ in range(30)))
    assert peak == 3
    assert limiter_peak == 3
    assert limiter.in_flight == 0


async def test_clustered_429s_hold_every_waiter_until_the_pause_has_passed() -> None:
    limiter = RateLimiter(20.0, 10)
    tickets = []
    for _ in range(3):
        async with limiter.slot() as ticket:
            tickets.append(ticket)
    entries: list[float] = []

    async def request() -> None:
        async with limiter.slot():
            entries.append(time.monotonic())

    waiters = [asyncio.create_task(request()) for _ in range(5)]
    await asyncio.sleep(0)  # every waiter is now queued on the rate
    assert entries == []
    throttled_at = time.monotonic()
    for ticket in tickets:  # three 429s within a second: a cluster, not a stray
        limiter.rejected(ticket, 0.3)
    await asyncio.wait_for(asyncio.gather(*waiters), 10)
    assert len(entries) == 5
    assert min(entries) >= throttled_at + 0.3
    assert limiter.pauses == 1


async def test_an_announced_limit_caps_the_rate(vt: VirtualTime) -> None:
    limiter = RateLimiter(10.0, 8, clock=vt.clock)
    limiter.observe(RateInfo(200, limit_minute=120, remaining_minute=119))  # 2 a second
    assert 0 < limiter.rate <= 2.0
    times = [await take(limiter, vt) for _ in range(40)]
    assert all(b - a >= 0.5 - 1e-9 for a, b in zip(times, times[1:], strict=False))
    assert limiter.rate <= 2.0, "answers never raise it above the server's limit"

    unlimited = RateLimiter(0, 8)
    unlimited.observe(RateInfo(200, limit_minute=180))
    assert 0 < unlimited.rate <= 3.0

    stricter_config = RateLimiter(1.0, 8)
    stricter_config.observe(RateInfo(200, limit_minute=600))
    assert stricter_config.rate <= 1.0  # a generous server never raises the configured rate


async def test_close_makes_rate_waiters_raise_stop_requested() -> None:
    limiter = RateLimiter(5.0, 10)
    async with limiter.slot():
        pass
    entered: list[int] = []

    async def request(i: int) -> None:
        async with limiter.slot():
            entered.append(i)

    waiters = [asyncio.create_task(request(i)) for i in range(4)]
    await asyncio.sleep(0)
    limiter.close()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10)
    assert all(isinstance(r, StopRequested) for r in results), results
    assert entered == []
    with pytest.raises(StopRequested):
        async with limiter.slot():
            entered.append(99)
    assert entered == []


async def test_close_stops_waiters_queued_on_the_concurrency_cap() -> None:
    limiter = RateLimiter(0, 1)
    release = asyncio.Event()
    entered: list[int] = []

    async def holder() -> None:
        async with limiter.slot():
            await release.wait()

    async def request(i: int) -> None:
        async with limiter.slot():
            entered.append(i)

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(request(i)) for i in range(3)]
    await asyncio.sleep(0)
    limiter.close()
    release.set()
    await held
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10)
    assert all(isinstance(r, StopRequested) for r in results), results
    assert entered == []


# ---- Retry-After and URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after": "4"}, 4.0),  # header names are case-insensitive
        ({"Retry-After": "-5"}, 0.0),
        ({"retry-after-ms": "250", "Retry-After": "1"}, 0.25),
        ({"retry-after-ms": "soon", "Retry-After": "3"}, 3.0),
        ({"Retry-After": "in a while"}, None),
        ({"Retry-After": ""}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(CIMultiDict(headers)) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    later = email.utils.formatdate(now + 30, usegmt=True)
    earlier = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(CIMultiDict({"Retry-After": later}), now=now) == pytest.approx(30.0)
    assert parse_retry_after(CIMultiDict({"Retry-After": earlier}), now=now) == 0.0


@pytest.mark.parametrize(
    ("endpoint", "version", "expected"),
    [
        ("https://api.mistral.ai", None, "https://api.mistral.ai/v1/ocr"),
        ("https://api.mistral.ai/", None, "https://api.mistral.ai/v1/ocr"),
        ("http://127.0.0.1:8080", None, "http://127.0.0.1:8080/v1/ocr"),
        ("https://gw.example.com/mistral", None, "https://gw.example.com/mistral/v1/ocr"),
        (
            "https://res.services.ai.azure.com/providers/mistral/azure/ocr",
            "2024-05-01-preview",
            "https://res.services.ai.azure.com/providers/mistral/azure/ocr?api-version=2024-05-01-preview",
        ),
        (
            "https://res.services.ai.azure.com/providers/mistral/azure/ocr/",
            "2024-05-01-preview",
            "https://res.services.ai.azure.com/providers/mistral/azure/ocr?api-version=2024-05-01-preview",
        ),
        (
            "https://res.services.ai.azure.com/providers/mistral/azure/ocr?api-version=2025-01-01",
            "2024-05-01-preview",
            "https://res.services.ai.azure.com/providers/mistral/azure/ocr?api-version=2025-01-01",
        ),
    ],
)
def test_ocr_url(endpoint: str, version: str | None, expected: str) -> None:
    service = ServiceSettings(endpoint=endpoint, azure_api_version=version)
    assert ocr_url(service) == expected


# ---- call_with_retry against an in-test backend ---------------------------------------------------


def make_chunk(pages: int = 2, rel: str = "doc.pdf") -> Chunk:
    data = pdf_bytes([page_text(rel, i) for i in range(pages)])
    return Chunk(rel, 0, 0, pages, PDF, data, hashlib.sha256(data).hexdigest())


def good_answer(pages: int = 2) -> dict[str, Any]:
    return {
        "pages": [{"index": i, "markdown": f"page {i}", "images": []} for i in range(pages)],
        "model": "scripted",
        "usage_info": {"pages_processed": pages, "doc_size_bytes": 1},
    }


def status_error(status: int, retry_after: float | None = None) -> RetryableError:
    return RetryableError(f"HTTP {status}", status=status, retry_after=retry_after)


class ScriptedBackend:
    """Answers (or raises) the scripted items in order; counts calls."""

    name = "scripted"
    model = "scripted"

    def __init__(self, script: list[Any], on_call: Any = None) -> None:
        self.script = list(script)
        self.calls = 0
        self.on_call = on_call

    async def ocr(self, chunk: Chunk) -> dict[str, Any]:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        pass


async def retry(
    backend: ScriptedBackend,
    attempts: int,
    *,
    health: EndpointHealth | None = None,
    limiter: RateLimiter | None = None,
    chunk: Chunk | None = None,
) -> tuple[dict[str, Any], RetryStats]:
    stats = RetryStats()
    policy = RetryPolicy(attempts=attempts, initial=0.001, maximum=0.01, rng=random.Random(5))
    result = await call_with_retry(
        backend,
        chunk or make_chunk(),
        limiter or RateLimiter(0, 4),
        policy,
        health or EndpointHealth(600.0),
        stats,
    )
    return result, stats


async def test_transient_errors_are_retried_until_an_answer() -> None:
    backend = ScriptedBackend([status_error(503), status_error(500), good_answer()])
    result, stats = await retry(backend, attempts=3)
    assert result == good_answer()
    assert backend.calls == 3
    assert stats.retries == 2
    assert stats.by_status == {"503": 1, "500": 1, "200": 1}


async def test_transient_errors_are_reraised_after_the_last_attempt() -> None:
    backend = ScriptedBackend([status_error(503)] * 10)
    with pytest.raises(RetryableError) as info:
        await retry(backend, attempts=3)
    assert info.value.status == 503
    assert backend.calls == 3


async def test_a_short_answer_counts_as_a_transient_failure() -> None:
    backend = ScriptedBackend([good_answer(1), good_answer(1), good_answer(2)])
    result, _ = await retry(backend, attempts=3)
    assert len(result["pages"]) == 2
    backend = ScriptedBackend([good_answer(1)] * 5)
    with pytest.raises(RetryableError):
        await retry(backend, attempts=2)
    assert backend.calls == 2


async def test_429s_do_not_use_up_attempts() -> None:
    script = [status_error(429, retry_after=0.01)] * 5 + [good_answer()]
    backend = ScriptedBackend(script)
    limiter = RateLimiter(0, 4)
    result, stats = await retry(backend, attempts=2, limiter=limiter)
    assert result == good_answer()
    assert backend.calls == 6
    assert stats.throttled == 5
    assert limiter.rejections == 5


async def test_429s_between_failures_do_not_count_but_failures_do() -> None:
    script = [status_error(503), status_error(429, 0.01), status_error(503),
              status_error(429, 0.01), status_error(503), good_answer()]
    backend = ScriptedBackend(script)
    with pytest.raises(RetryableError) as info:
        await retry(backend, attempts=3)
    assert info.value.status == 503
    assert backend.calls == 5  # three failures, two free 429s


async def test_fatal_errors_are_not_retried() -> None:
    backend = ScriptedBackend([FatalError("the OCR service refused the API key"), good_answer()])
    with pytest.raises(FatalError):
        await retry(backend, attempts=5)
    assert backend.calls == 1


async def test_rejected_documents_are_not_retried() -> None:
    backend = ScriptedBackend([RejectedError("HTTP 422: bad document"), good_answer()])
    with pytest.raises(RejectedError) as info:
        await retry(backend, attempts=5)
    assert info.value.category == Category.REJECTED
    assert backend.calls == 1


def test_endpoint_health_turns_fatal_only_past_the_deadline() -> None:
    now = [0.0]
    health = EndpointHealth(10.0, clock=lambda: now[0])
    error = status_error(503)
    health.failed(error)
    now[0] = 9.0
    health.failed(error)  # failing for 9 s: still within the deadline
    health.ok()  # one success resets the count
    now[0] = 15.0
    health.failed(error)
    now[0] = 24.0
    health.failed(error)
    now[0] = 26.0
    with pytest.raises(FatalError) as info:
        health.failed(error)
    assert "HTTP 503" in str(info.value)


async def test_a_service_down_past_the_deadline_stops_retrying_with_fatal() -> None:
    now = [0.0]

    def advance() -> None:
        now[0] += 100.0  # each try happens 100 s after the previous one

    backend = ScriptedBackend([status_error(503)] * 50, on_call=advance)
    with pytest.raises(FatalError):
        await retry(backend, attempts=50, health=EndpointHealth(150.0, clock=lambda: now[0]))
    assert backend.calls == 3  # not 50


# ---- the Mistral backend over HTTP ------------------------------------------------------------------


def backend_for(endpoint: str, key: str = KEY, **overrides: Any) -> MistralBackend:
    values: dict[str, Any] = {"backend": "mistral", "endpoint": endpoint, "request_timeout": 10.0,
                              "connect_timeout": 5.0, **overrides}
    return MistralBackend.from_settings(load_settings(None, values, env={"MISTRAL_API_KEY": key}))


@pytest.fixture
async def capture_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback server that records each request and answers one page per request."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({"headers": CIMultiDict(request.headers), "body": await request.json(),
                     "path_qs": request.path_qs})
        return web.json_response(good_answer(2))

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    async with serve_app(app) as url:
        yield url, seen


async def test_backend_reads_a_real_answer_from_the_fake_server(fake_server) -> None:
    server = await fake_server(api_key=KEY)
    backend = backend_for(server.url)
    chunk = make_chunk(2)
    try:
        answer = check_response(chunk, await backend.ocr(chunk))
    finally:
        await backend.close()
    for i in range(2):
        assert page_text("doc.pdf", i) in answer["pages"][i]["markdown"]
    assert server.stats.answered_ok == 1


async def test_backend_tells_the_limiter_once_as_the_body_leaves() -> None:
    """The HTTP backend tells whom `on_wire` names as it writes the request, once: after the
    call began and before the server read the body."""
    arrivals: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        arrivals.append(time.monotonic())
        return web.json_response(good_answer(2))

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    told: list[float] = []
    async with serve_app(app) as url:
        backend = backend_for(url)
        try:
            for _ in range(3):
                began = time.monotonic()
                with on_wire.telling(lambda: told.append(time.monotonic())):
                    await backend.ocr(make_chunk(2))
                assert began <= told[-1] <= arrivals[-1]
            await backend.ocr(make_chunk(2))  # nobody to tell: nothing told
        finally:
            await backend.close()
    assert len(told) == 3 and len(arrivals) == 4


async def test_a_request_that_leaves_late_holds_the_next_window_back(vt: VirtualTime) -> None:
    """Through `call_with_retry`, what the backend tells moves the send in the limiter's log:
    at one a second, a request that left 0.4 s after its slot holds the next one until a
    second after it left, not after its slot."""
    limiter = RateLimiter(1, None, clock=vt.clock)
    sent: list[float] = []

    def leave_late() -> None:
        if not sent:
            vt.now += 0.4  # the first request leaves 0.4 s after its slot
        tell = on_wire.listener()
        assert tell is not None
        tell()
        sent.append(vt.now)

    backend = ScriptedBackend([good_answer(), good_answer()], on_call=leave_late)
    await retry(backend, attempts=1, limiter=limiter)
    await retry(backend, attempts=1, limiter=limiter)
    assert sent[1] - sent[0] == pytest.approx(1.0 + limiter.margin)
    assert on_wire.listener() is None


async def test_after_a_429_the_retry_tells_for_its_own_send(vt: VirtualTime) -> None:
    """A refused try leaves the `on_wire` block by its exception; the retry gets a listener of
    its own, and the time it left is the one the next window counts from."""
    limiter = RateLimiter(1, None, clock=vt.clock)
    sent: list[float] = []
    listeners: list[object] = []

    lateness = [0.2, 0.3, 0.0]  # the refused try, its retry, the next request

    def leave_late() -> None:
        vt.now += lateness[len(sent)]
        tell = on_wire.listener()
        assert tell is not None
        listeners.append(tell)
        tell()
        sent.append(vt.now)

    backend = ScriptedBackend([status_error(429, retry_after=0.0), good_answer(), good_answer()],
                              on_call=leave_late)
    await retry(backend, attempts=1, limiter=limiter)
    assert on_wire.listener() is None
    await retry(backend, attempts=1, limiter=limiter)
    assert len(set(map(id, listeners))) == 3
    assert sent[2] - sent[1] == pytest.approx(1.0 + limiter.margin)


async def test_backend_sends_a_bearer_key_and_the_document_as_a_data_url(capture_server) -> None:
    url, seen = capture_server
    backend = backend_for(url)
    chunk = make_chunk(2)
    try:
        await backend.ocr(chunk)
    finally:
        await backend.close()
    [request] = seen
    assert request["path_qs"] == "/v1/ocr"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert "api-key" not in request["headers"]
    document = request["body"]["document"]
    assert document["type"] == "document_url"
    prefix = "data:application/pdf;base64,"
    assert document["document_url"].startswith(prefix)
    assert base64.b64decode(document["document_url"][len(prefix):]) == chunk.data
    assert request["body"]["model"] == "mistral-ocr-latest"


async def test_backend_can_send_an_api_key_header_to_an_azure_route(capture_server) -> None:
    url, seen = capture_server
    backend = backend_for(f"{url}/providers/mistral/azure/ocr", auth_header="api-key",
                          azure_api_version="2024-05-01-preview")
    try:
        await backend.ocr(make_chunk(2))
    finally:
        await backend.close()
    [request] = seen
    assert request["headers"]["api-key"] == KEY
    assert "Authorization" not in request["headers"]
    assert request["path_qs"] == "/providers/mistral/azure/ocr?api-version=2024-05-01-preview"


async def test_the_fake_server_accepts_the_api_key_header(fake_server) -> None:
    server = await fake_server(api_key=KEY)
    backend = backend_for(server.url, auth_header="api-key")
    try:
        answer = await backend.ocr(make_chunk(2))
    finally:
        await backend.close()
    assert len(answer["pages"]) == 2


async def test_a_refused_key_is_fatal_and_the_message_does_not_leak_it(fake_server) -> None:
    server = await fake_server(api_key="the-right-key")
    wrong = "sk-wrong-key-0042-SHOULD-NOT-APPEAR"
    backend = backend_for(server.url, key=wrong)
    try:
        with pytest.raises(FatalError) as info:
            await backend.ocr(make_chunk(1))
    finally:
        await backend.close()
    text = f"{info.value} {info.value!r} {info.value.args} {info.value.hint}"
    assert "refused the API key" in str(info.value)
    assert wrong not in text
    assert "the-right-key" not in text


async def test_a_refused_key_stops_retrying_after_one_request(fake_server) -> None:
    server = await fake_server(api_key="the-right-key")
    backend = backend_for(server.url, key="sk-wrong")
    try:
        with pytest.raises(FatalError):
            stats = RetryStats()
            await call_with_retry(backend, make_chunk(1), RateLimiter(0, 4),
                                  RetryPolicy(6, 0.01, 0.05), EndpointHealth(600.0), stats)
    finally:
        await backend.close()
    assert server.stats.requests == 1


@pytest.mark.parametrize(
    ("fault", "error", "status", "category"),
    [
        ("422", RejectedError, None, Category.REJECTED),
        ("400", RejectedError, None, Category.REJECTED),
        ("503", RetryableError, 503, Category.BACKEND),
        ("500", RetryableError, 500, Category.BACKEND),
        ("502", RetryableError, 502, Category.BACKEND),
        ("504", RetryableError, 504, Category.TIMEOUT),
        ("malformed", RetryableError, None, Category.BACKEND),
        ("reset", RetryableError, None, Category.BACKEND),
    ],
)
async def test_http_failures_map_to_the_error_taxonomy(
    fake_server, fault: str, error: type[Exception], status: int | None, category: Category
) -> None:
    server = await fake_server(faults=(fault,), fault_rate=1.0)
    backend = backend_for(server.url)
    try:
        with pytest.raises(error) as info:
            await backend.ocr(make_chunk(1))
    finally:
        await backend.close()
    assert info.value.category == category
    if status is not None:
        assert info.value.status == status
    assert "doc.pdf" in str(info.value)


async def test_a_429_carries_its_retry_after(fake_server) -> None:
    server = await fake_server(faults=("429",), fault_rate=1.0, retry_after=2.5)
    backend = backend_for(server.url)
    try:
        with pytest.raises(RetryableError) as info:
            await backend.ocr(make_chunk(1))
    finally:
        await backend.close()
    assert info.value.status == 429
    assert info.value.retry_after == pytest.approx(2.5)


class HeardRates:
    def __init__(self) -> None:
        self.heard: list[RateInfo] = []

    def observe(self, info: RateInfo) -> None:
        self.heard.append(info)


async def test_the_backend_reports_every_answers_rate_headers(fake_server) -> None:
    server = await fake_server(rps_limit=2.0)
    listener = HeardRates()
    values = {"backend": "mistral", "endpoint": server.url, "request_timeout": 10.0}
    backend = MistralBackend.from_settings(load_settings(None, values, env={"MISTRAL_API_KEY": KEY}),
                             rate_listener=listener)
    try:
        await backend.ocr(make_chunk(1))
        await backend.ocr(make_chunk(1))
        with pytest.raises(RetryableError):
            await backend.ocr(make_chunk(1))  # the third within a second: 429
    finally:
        await backend.close()
    assert [info.status for info in listener.heard] == [200, 200, 429]
    assert all(info.limit_minute == 120 for info in listener.heard)
    assert listener.heard[-1].retry_after is not None


async def test_a_hanging_request_times_out_as_retryable(fake_server) -> None:
    server = await fake_server(faults=("hang",), fault_rate=1.0)
    backend = backend_for(server.url, request_timeout=0.5)
    try:
        with pytest.raises(RetryableError) as info:
            await asyncio.wait_for(backend.ocr(make_chunk(1)), 10)
    finally:
        await backend.close()
    assert info.value.category == Category.TIMEOUT


async def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is closed now: nothing listens there.
    backend = backend_for(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(RetryableError) as info:
            await backend.ocr(make_chunk(1))
    finally:
        await backend.close()
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_close_wakes_a_waiter_in_a_long_retry_after_pause() -> None:
    limiter = RateLimiter(rps=10, max_in_flight=2)
    # The server says its window is full for 60 s: a stop must not wait for it.
    limiter.observe(RateInfo(429, limit_second=10, remaining_second=0, retry_after=60))

    async def wait_for_slot() -> None:
        async with limiter.slot():
            pass

    waiter = asyncio.create_task(wait_for_slot())
    await asyncio.sleep(0.05)
    assert not waiter.done(), "the waiter must be held by the pause"
    limiter.close()
    with pytest.raises(StopRequested):
        await asyncio.wait_for(waiter, timeout=2)


async def test_retry_after_zero_means_no_wait(vt: VirtualTime) -> None:
    limiter = RateLimiter(rps=10, max_in_flight=4, clock=vt.clock)
    waits = []
    for _ in range(3):
        async with limiter.slot() as ticket:
            waits.append(limiter.rejected(ticket, 0))
    before = vt.now
    await take(limiter, vt)
    assert waits == [0.0, 0.0, 0.0]
    assert vt.now - before <= 0.2, "no pause beyond the rate's own spacing"


async def test_a_configured_rate_sends_at_once_without_a_ramp() -> None:
    limiter = RateLimiter(rps=1000, max_in_flight=8)
    inside = 0
    release = asyncio.Event()

    async def request() -> None:
        nonlocal inside
        async with limiter.slot():
            inside += 1
            await release.wait()

    tasks = [asyncio.create_task(request()) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert inside == 4
    release.set()
    await asyncio.gather(*tasks)


def test_an_announced_limit_above_the_configured_rate_leaves_it_alone() -> None:
    limiter = RateLimiter(rps=50, max_in_flight=8)
    configured = limiter.rate
    limiter.observe(RateInfo(200, limit_minute=3000))  # exactly what was configured
    assert limiter.rate == configured == pytest.approx(50 / (1 + limiter.margin))
    limiter.observe(RateInfo(200, limit_minute=1200))  # the server allows less: it wins
    assert limiter.rate == pytest.approx(20 / (1 + limiter.margin))


async def test_an_answer_at_the_first_try_leaves_no_cyclic_garbage() -> None:
    """At hundreds of requests a second, objects in reference cycles that live as long as a
    request fill the oldest GC generation, whose full collections stall every send. An answer
    at the first try must make none (tenacity's loop makes dozens: it is built only for a
    retry)."""
    limiter, chunk = RateLimiter(0, 4), make_chunk()
    await retry(ScriptedBackend([good_answer()]), attempts=3, limiter=limiter, chunk=chunk)
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            await retry(ScriptedBackend([good_answer()]), attempts=3, limiter=limiter,
                        chunk=chunk)
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0, f"{found} objects in reference cycles after 20 first-try answers"
