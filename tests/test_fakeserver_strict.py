"""The fake server's strict mode, checked from outside with real aiohttp clients on 127.0.0.1:
a sliding-window rate limit as exact as a real gateway's, the rate-limit headers on a flag,
latency distributions applied after admission, stuck requests, window statistics, and request
validation to the letter of the published OCRRequest schema (answers conforming to OCRResponse).
Small R and short latencies keep every test within a few seconds."""

from __future__ import annotations

import asyncio
import base64
import math
import resource
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from pipeline.fakeserver import FakeServer, FakeServerOptions, start_fake_server
from pipeline.fakeserver.cli import build_parser, options_from_args
from pipeline.fakeserver.conformance import response_problems
from pipeline.fakeserver.latency import LatencyModel
from pipeline.fakeserver.ratelimit import SlidingWindowLimiter
from pipeline.fakeserver.stats import Stats
from tests.pdfgen import page_text, pdf_bytes, png_bytes

Serve = Callable[..., Awaitable[FakeServer]]
STRICT = {"rate_limit_mode": "sliding-window"}
PNG = png_bytes()
PDF3 = pdf_bytes([page_text("S", i) for i in range(3)])
PDF1 = pdf_bytes([page_text("S", 0)])


def image_body(data: bytes = PNG) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"model": "mistral-ocr-latest", "document": {"type": "image_url", "image_url": url}}


def pdf_body(data: bytes, **extra: Any) -> dict[str, Any]:
    url = "data:application/pdf;base64," + base64.b64encode(data).decode()
    return {"model": "mistral-ocr-latest",
            "document": {"type": "document_url", "document_url": url}, **extra}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def post(client: aiohttp.ClientSession, server: FakeServer,
               body: Any = None) -> tuple[int, Any, dict[str, str], float]:
    """POST /v1/ocr: status, JSON body, headers and the seconds the answer took."""
    started = time.monotonic()
    async with client.post(server.url + "/v1/ocr", json=image_body() if body is None else body) as r:
        payload = await r.json(content_type=None)
        return r.status, payload, dict(r.headers), time.monotonic() - started


# --- the sliding window, exact (a virtual clock) ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_admits_iff_fewer_than_r_in_the_last_second() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(3, clock=clock)
    verdicts = []
    for t in (0.0, 0.1, 0.2, 0.5, 1.0, 1.05, 1.1, 1.2):
        clock.now = 100.0 + t
        d = limiter.acquire()
        verdicts.append((t, d.allowed, round(d.wait, 6)))
    assert verdicts == [
        (0.0, True, 0.0), (0.1, True, 0.0), (0.2, True, 0.0),
        (0.5, False, 0.5),    # 0.0 leaves the window (now-1, now] at 1.0
        (1.0, True, 0.0),     # 0.0 is out: (0.0, 1.0] holds 0.1, 0.2
        (1.05, False, 0.05),  # (0.05, 1.05] holds 0.1, 0.2, 1.0: wait for 0.1 to leave
        (1.1, True, 0.0),     # rejected requests were not counted
        (1.2, True, 0.0),
    ]


def test_per_minute_window_is_enforced_beside_the_per_second_one() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(10, per_minute=4, clock=clock)
    for k in range(4):
        clock.now = 100.0 + 2 * k
        assert limiter.acquire().allowed
    clock.now = 110.0
    refused = limiter.acquire()
    assert not refused.allowed
    assert refused.wait == pytest.approx(50.0)  # the first admission, at 100, leaves at 160
    clock.now = 160.0
    assert limiter.acquire().allowed
    assert limiter.minute_headers() == {"x-ratelimit-limit-req-minute": "4",
                                        "x-ratelimit-remaining-req-minute": "0"}


def test_max_admissions_in_any_window_is_exact() -> None:
    stats = Stats()
    times = [0.0, 0.3, 0.9, 1.0, 1.25, 1.95, 2.0, 5.0]
    for t in times:
        stats.count_admitted(t)
    # brute force over windows (s - 1, s] ending at each admission
    expected = max(sum(1 for u in times if s - 1 < u <= s) for s in times)
    assert stats.max_admitted_1s == expected == 4  # 1.0, 1.25, 1.95, 2.0 (0.9 < 1.0 is out)
    assert stats.max_admitted_60s == len(times)
    assert stats.admitted == len(times)


# --- the sliding window, on the wire ------------------------------------------------------------


async def test_a_burst_of_3r_requests_admits_exactly_r(fake_server: Serve,
                                                      client: aiohttp.ClientSession) -> None:
    rate = 5
    server = await fake_server(rps_limit=rate, **STRICT)
    results = await asyncio.gather(*(post(client, server) for _ in range(3 * rate)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] * rate + [429] * (2 * rate)
    assert server.stats.admitted == rate
    assert server.stats.rate_limited == 2 * rate
    assert server.stats.max_admitted_1s == rate


async def test_token_bucket_still_lets_a_burst_through_then_refills(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    """The lenient mode, for contrast: after 0.5 s a 2 req/s bucket has a token again, while
    the strict window would still be full."""
    body = image_body()
    lenient = await fake_server(rps_limit=2)
    strict = await fake_server(rps_limit=2, **STRICT)
    for server in (lenient, strict):
        assert [(await post(client, server, body))[0] for _ in range(2)] == [200, 200]
    await asyncio.sleep(0.55)
    assert (await post(client, lenient, body))[0] == 200
    assert (await post(client, strict, body))[0] == 429


async def test_r_requests_spread_over_a_second_are_all_admitted(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    rate = 5
    server = await fake_server(rps_limit=rate, **STRICT)
    statuses = []
    for _ in range(rate):
        statuses.append((await post(client, server))[0])
        await asyncio.sleep(1.0 / rate)
    assert statuses == [200] * rate
    assert server.stats.rate_limited == 0


async def test_one_more_within_the_second_gets_429_with_the_time_until_a_slot_frees(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    rate = 4
    server = await fake_server(rps_limit=rate, **STRICT)
    before_burst = time.monotonic()
    burst = await asyncio.gather(*(post(client, server) for _ in range(rate)))
    after_burst = time.monotonic()
    assert [r[0] for r in burst] == [200] * rate
    await asyncio.sleep(0.3)
    before_extra = time.monotonic()
    status, answer, headers, _ = await post(client, server)
    after_extra = time.monotonic()
    assert status == 429
    assert answer["message"]
    wait = int(headers["retry-after-ms"]) / 1000
    # the oldest admission (between before_burst and after_burst) leaves 1 s after it came
    assert before_burst + 1 - after_extra - 0.002 <= wait <= after_burst + 1 - before_extra + 0.002
    assert headers["Retry-After"] == str(math.ceil(wait)) == "1"
    await asyncio.sleep(wait)
    assert (await post(client, server))[0] == 200  # the wait announced was long enough


async def test_per_minute_limit_refuses_past_m_with_retry_after_near_a_minute(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    server = await fake_server(rps_limit=100, rpm_limit=3, **STRICT)
    statuses = [(await post(client, server))[0] for _ in range(3)]
    status, _, headers, _ = await post(client, server)
    assert statuses == [200, 200, 200]
    assert status == 429
    assert 58_000 <= int(headers["retry-after-ms"]) <= 60_000
    assert headers["Retry-After"] == "60"
    assert server.stats.max_admitted_60s == 3


# --- headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "rpm", "limit"), [(None, None, None), (False, None, None),
                                                   (True, None, "180"), (True, 5, "5")])
async def test_ratelimit_headers_on_200_and_429_only_when_enabled(
    fake_server: Serve, client: aiohttp.ClientSession, flag: bool | None, rpm: int | None,
    limit: str | None,
) -> None:
    server = await fake_server(rps_limit=3, rpm_limit=rpm, ratelimit_headers=flag, **STRICT)
    results = await asyncio.gather(*(post(client, server) for _ in range(4)))
    seen = {r[0] for r in results}
    assert seen == {200, 429}
    for _, _, headers, _ in results:
        got = headers.get("x-ratelimit-limit-req-minute")
        assert got == limit
        if limit is None:
            assert "x-ratelimit-remaining-req-minute" not in headers
    if limit is not None:
        remaining = sorted(int(r[2]["x-ratelimit-remaining-req-minute"]) for r in results)
        # after 3 admissions the minute window holds 3: the 429 reports limit - 3
        assert remaining[0] == int(limit) - 3


# --- latency -------------------------------------------------------------------------------------


async def test_fixed_latency_is_applied_after_admission_and_429s_come_back_at_once(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    server = await fake_server(rps_limit=2, latency=0.6, **STRICT)
    tasks = [asyncio.create_task(post(client, server)) for _ in range(4)]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    first = next(iter(done)).result()
    assert first[0] == 429  # a refusal never waits for the latency
    results = [first, *(await asyncio.gather(*(t for t in tasks if t not in done)))]
    admitted = [r for r in results if r[0] == 200]
    assert len(admitted) == 2
    for _, _, _, seconds in admitted:
        assert 0.6 <= seconds < 0.6 + 0.5


async def test_uniform_latency_stays_within_its_bounds(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    server = await fake_server(latency=0.2, latency_max=0.5, latency_distribution="uniform",
                               seed=3)
    results = await asyncio.gather(*(post(client, server) for _ in range(12)))
    seconds = [r[3] for r in results]
    assert all(r[0] == 200 for r in results)
    assert min(seconds) >= 0.2
    assert max(seconds) < 0.5 + 0.4
    assert max(seconds) - min(seconds) > 0.05  # drawn, not fixed


def test_latency_draws_are_seedable_and_respect_each_distribution() -> None:
    uniform = FakeServerOptions(latency=1.0, latency_max=3.0, seed=7)
    assert uniform.latency_distribution == "uniform"  # latency_max alone still means uniform
    draws = [LatencyModel(uniform).base() for _ in range(2)]
    assert draws[0] == draws[1]  # same seed, same first draw
    model = LatencyModel(uniform)
    values = [model.base() for _ in range(2000)]
    assert min(values) >= 1.0 and max(values) <= 3.0
    assert statistics.mean(values) == pytest.approx(2.0, abs=0.1)

    tail = FakeServerOptions(latency=2.0, latency_distribution="lognormal", latency_sigma=0.8,
                             latency_max=9.0, seed=11)
    model = LatencyModel(tail)
    values = [model.base() for _ in range(4000)]
    assert max(values) <= 9.0
    assert max(values) == 9.0  # sigma 0.8: a few draws reach the cap
    assert statistics.median(values) == pytest.approx(2.0, rel=0.1)

    fixed = LatencyModel(FakeServerOptions(latency=0.5, latency_per_page=0.1))
    assert fixed.service_time(pages=50) == pytest.approx(5.5)
    assert fixed.service_time(pages=1) == pytest.approx(0.6)


async def test_per_page_latency_makes_a_longer_document_take_longer(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    server = await fake_server(latency_per_page=0.3)
    one, three = await asyncio.gather(post(client, server, pdf_body(PDF1)),
                                      post(client, server, pdf_body(PDF3)))
    assert one[0] == three[0] == 200
    assert one[3] >= 0.3
    assert three[3] >= 0.9
    assert three[3] > one[3]


async def test_latency_does_not_block_the_event_loop(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    server = await fake_server(latency=1.0, **STRICT)
    slow = asyncio.create_task(post(client, server))
    while server.stats.admitted < 1:
        await asyncio.sleep(0.01)
    async with client.get(server.url + "/_stats") as resp:
        stats = await resp.json()
    assert not slow.done()
    assert stats["admitted"] == 1 and stats["in_flight"] == 1
    assert (await slow)[0] == 200


# --- stuck requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("option", [{"stuck_first": 1}, {"stuck_request": 1}])
async def test_a_stuck_request_hangs_while_the_others_are_answered(
    fake_server: Serve, client: aiohttp.ClientSession, option: dict[str, int]
) -> None:
    server = await fake_server(rps_limit=50, stuck_seconds=1.5, **STRICT, **option)
    stuck = asyncio.create_task(post(client, server))
    while server.stats.admitted < 1:
        await asyncio.sleep(0.01)
    others = await asyncio.gather(*(post(client, server) for _ in range(5)))
    assert [r[0] for r in others] == [200] * 5
    assert not stuck.done()  # still hanging after five others were answered
    status, answer, _, seconds = await stuck
    assert status == 200 and answer["pages"]
    assert seconds >= 1.5
    assert server.stats.stuck == 1


async def test_only_the_kth_admitted_request_is_stuck(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    server = await fake_server(stuck_request=3, stuck_seconds=5.0)
    fast = [await post(client, server) for _ in range(2)]
    third = asyncio.create_task(post(client, server))
    while server.stats.admitted < 3:
        await asyncio.sleep(0.01)
    fourth = await post(client, server)
    assert [r[0] for r in fast] + [fourth[0]] == [200, 200, 200]
    assert not third.done()
    assert server.stats.stuck == 1
    third.cancel()


# --- stats, options, process limits -------------------------------------------------------------


async def test_stats_endpoint_reports_admissions_refusals_and_the_busiest_window(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    server = await fake_server(rps_limit=3, **STRICT)
    await asyncio.gather(*(post(client, server) for _ in range(7)))
    async with client.get(server.url + "/_stats") as resp:
        stats = await resp.json()
    assert (stats["admitted"], stats["rate_limited"], stats["max_admitted_1s"]) == (3, 4, 3)
    assert stats["by_status"] == {"200": 3, "429": 4}
    assert not any(key.startswith("_") for key in stats)
    async with client.post(server.url + "/_reset") as resp:
        zeroed = await resp.json()
    assert (zeroed["admitted"], zeroed["max_admitted_1s"]) == (0, 0)
    assert (await post(client, server))[0] == 200  # reset emptied the window too


@pytest.mark.parametrize(
    "bad",
    [{"rate_limit_mode": "leaky"}, {"rpm_limit": 10},
     {"rate_limit_mode": "sliding-window", "rpm_limit": 0},
     {"rate_limit_mode": "sliding-window", "rps_limit": 0.5},
     {"latency_distribution": "uniform"}, {"latency_distribution": "gamma"},
     {"latency_distribution": "lognormal"}, {"latency_per_page": -1}, {"latency_sigma": -1},
     {"stuck_first": -1}, {"stuck_request": 0}, {"stuck_seconds": -1}],
)
def test_bad_strict_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FakeServerOptions(**bad)


def test_cli_strict_flags_reach_the_options() -> None:
    args = build_parser().parse_args([
        "--rate-limit-mode", "sliding-window", "--rps-limit", "50", "--rpm-limit", "2000",
        "--ratelimit-headers", "--latency", "1", "--latency-distribution", "lognormal",
        "--latency-sigma", "0.7", "--latency-max", "8", "--latency-per-page", "0.05",
        "--stuck-first", "2", "--stuck-seconds", "40",
    ])
    o = options_from_args(args)
    assert (o.rate_limit_mode, o.rps_limit, o.rpm_limit, o.headers_enabled) == (
        "sliding-window", 50, 2000, True)
    assert (o.latency_distribution, o.latency_sigma, o.latency_max, o.latency_per_page) == (
        "lognormal", 0.7, 8, 0.05)
    assert (o.stuck_first, o.stuck_seconds) == (2, 40)
    strict = options_from_args(build_parser().parse_args(["--rate-limit-mode", "sliding-window"]))
    assert not strict.headers_enabled  # off by default in strict mode
    lenient = options_from_args(build_parser().parse_args(["--no-ratelimit-headers"]))
    assert not lenient.headers_enabled


async def test_server_start_raises_the_open_files_soft_limit_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, hard, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        server = await start_fake_server(FakeServerOptions())
        await server.stop()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, lowered), hard))


# --- requests to the letter of OCRRequest, answers conforming to OCRResponse --------------------

GOOD_SCHEMA = {"name": "book", "schema": {"type": "object"}, "strict": True}


@pytest.mark.parametrize(
    ("extra", "document", "loc", "type_"),
    [
        ({"id": "req-1"}, None, ["body", "id"], "extra_forbidden"),  # not in the schema
        ({"extract_header": None}, None, ["body", "extract_header"], "bool_type"),
        ({"extract_footer": None}, None, ["body", "extract_footer"], "bool_type"),
        ({"include_blocks": None}, None, ["body", "include_blocks"], "bool_type"),
        ({"document_annotation_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         None, ["body", "document_annotation_format", "json_schema", "name"], "missing"),
        ({"bbox_annotation_format": {"type": "json_schema",
                                     "json_schema": {**GOOD_SCHEMA, "colour": 1}}},
         None, ["body", "bbox_annotation_format", "json_schema", "colour"], "extra_forbidden"),
        ({"document_annotation_format": {"type": "json_schema",
                                         "json_schema": {**GOOD_SCHEMA, "schema": "x"}}},
         None, ["body", "document_annotation_format", "json_schema", "schema"], "dict_type"),
        ({"document_annotation_format": {"type": "json_schema",
                                         "json_schema": {**GOOD_SCHEMA, "strict": "yes"}}},
         None, ["body", "document_annotation_format", "json_schema", "strict"], "bool_type"),
        ({"document_annotation_format": {"type": "json_schema", "json_schema": []}},
         None, ["body", "document_annotation_format", "json_schema"], "model_type"),
        ({}, {"type": "file", "file_id": "not-a-uuid"}, ["body", "document", "file_id"],
         "uuid_parsing"),
        ({}, {"type": "image_url", "image_url": {"url": 5}},
         ["body", "document", "image_url", "url"], "string_type"),
    ],
)
async def test_requests_outside_the_published_schema_get_422(
    fake_server: Serve, client: aiohttp.ClientSession, extra: dict[str, Any],
    document: dict[str, Any] | None, loc: list[Any], type_: str,
) -> None:
    server = await fake_server()
    body = {**pdf_body(PDF1), **extra}
    if document is not None:
        body["document"] = document
    status, answer, _, _ = await post(client, server, body)
    assert status == 422
    assert {"loc": loc, "type": type_} in [{"loc": d["loc"], "type": d["type"]}
                                          for d in answer["detail"]]
    assert server.stats.answered_ok == 0


async def test_every_optional_field_of_the_schema_in_its_valid_form_is_accepted(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    server = await fake_server()
    body = pdf_body(
        PDF3, pages="0-1", include_image_base64=None, image_limit=None, image_min_size=10,
        bbox_annotation_format=None,
        document_annotation_format={"type": "json_schema", "json_schema": {
            **GOOD_SCHEMA, "description": None}},
        document_annotation_prompt="titles", table_format=None, extract_header=False,
        extract_footer=True, include_blocks=True, confidence_scores_granularity=None,
    )
    body["model"] = None  # required key, nullable
    body["document"]["document_name"] = None
    status, answer, _, _ = await post(client, server, body)
    assert status == 200, answer
    assert [p["index"] for p in answer["pages"]] == [0, 1]
    assert response_problems(answer) == []


@pytest.mark.parametrize(
    ("options", "body"),
    [
        ({}, pdf_body(PDF3)),
        ({}, image_body()),
        ({"images_per_page": 2}, pdf_body(PDF3, include_image_base64=True)),
        ({"images_per_page": 1, "image_id_style": "hostile"}, pdf_body(PDF1)),
        ({"cheap": True}, pdf_body(PDF3)),
        ({"fault_rate": 1.0, "faults": ("short",)}, pdf_body(PDF3)),
    ],
)
async def test_answers_conform_to_the_published_ocr_response(
    fake_server: Serve, client: aiohttp.ClientSession, options: dict[str, Any],
    body: dict[str, Any],
) -> None:
    server = await fake_server(**options)
    status, answer, _, _ = await post(client, server, body)
    assert status == 200
    assert answer["pages"]
    assert response_problems(answer) == []


async def test_the_conformance_check_catches_a_wrong_shape(
    fake_server: Serve, client: aiohttp.ClientSession
) -> None:
    server = await fake_server(fault_rate=1.0, faults=("wrong_shape",))
    status, answer, _, _ = await post(client, server, pdf_body(PDF1))
    assert status == 200
    assert response_problems(answer) == ["response.pages: required"]
    broken = {"pages": [{"index": -1, "markdown": 3, "images": [{"id": "x", "top_left_x": 1.5}],
                         "dimensions": {"dpi": 200}}],
              "model": "m", "usage_info": {"pages_processed": True}}
    assert response_problems(broken) == [
        "usage_info.pages_processed: not an integer >= 0",
        "pages[0].index: not an integer >= 0",
        "pages[0].markdown: not a string",
        "pages[0].dimensions.height: required",
        "pages[0].dimensions.width: required",
        "pages[0].images[0].top_left_y: required",
        "pages[0].images[0].bottom_right_x: required",
        "pages[0].images[0].bottom_right_y: required",
        "pages[0].images[0].top_left_x: not an integer >= 0 or null",
    ]
