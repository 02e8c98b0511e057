"""The fake Mistral OCR server, checked from outside: a real server on loopback, a real client."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import io
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from pypdf import PdfReader, PdfWriter

from pipeline.fakeserver import FakeServer, FakeServerOptions, main, start_fake_server
from tests.pdfgen import jpeg_bytes, page_text, pdf_bytes, png_bytes

ROOT = Path(__file__).resolve().parents[1]
Serve = Callable[..., Awaitable[FakeServer]]


def pdf_doc(data: bytes) -> dict[str, Any]:
    return {"type": "document_url",
            "document_url": "data:application/pdf;base64," + base64.b64encode(data).decode()}


def image_doc(data: bytes, mime: str = "image/png") -> dict[str, Any]:
    return {"type": "image_url",
            "image_url": f"data:{mime};base64," + base64.b64encode(data).decode()}


def ocr_body(document: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "mistral-ocr-latest", "document": document, **extra}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PDF3 = pdf_bytes([page_text("A", i) for i in range(3)])


@pytest.fixture
def serve(fake_server: Serve) -> Serve:
    """The shared `fake_server` fixture (conftest): servers with given options, all stopped at
    the end of the test."""
    return fake_server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def post(
    client: aiohttp.ClientSession, server: FakeServer, body: Any, **kwargs: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """POST to /v1/ocr; the body is JSON-decoded when it is JSON, else returned as text."""
    async with client.post(server.url + "/v1/ocr", json=body, **kwargs) as resp:
        text = await resp.text()
        try:
            payload: Any = json.loads(text)
        except json.JSONDecodeError:
            payload = text
        return resp.status, payload, resp


# --- answers -----------------------------------------------------------------------------


async def test_pdf_answer_has_every_page_in_order_with_its_text(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve()
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3)))
    assert status == 200
    assert [p["index"] for p in answer["pages"]] == [0, 1, 2]
    for i, page in enumerate(answer["pages"]):
        assert page_text("A", i) in page["markdown"]
        assert page["images"] == []
        # US letter (612 x 792 pt) at 200 dpi
        assert page["dimensions"] == {"dpi": 200, "width": 1700, "height": 2200}
    assert answer["model"] == "mistral-ocr-latest"
    assert answer["usage_info"] == {"pages_processed": 3, "doc_size_bytes": len(PDF3)}
    assert answer["document_annotation"] is None
    assert server.stats.answered_ok == 1
    assert server.stats.pages_answered == 3
    assert server.stats.ok_by_document == {sha(PDF3): 1}


@pytest.mark.parametrize(
    ("pages", "expected"), [("0,2", [0, 2]), ([1], [1]), ("1-2", [1, 2]), ([2, 0, 2], [0, 2])]
)
async def test_pages_field_selects_pages_and_keeps_their_numbers(
    serve: Serve, client: aiohttp.ClientSession, pages: Any, expected: list[int]
) -> None:
    server = await serve()
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3), pages=pages))
    assert status == 200
    assert [p["index"] for p in answer["pages"]] == expected
    assert [p["markdown"] for p in answer["pages"]] == [page_text("A", i) for i in expected]
    assert answer["usage_info"]["pages_processed"] == len(expected)


async def test_pages_beyond_the_document_are_rejected(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve()
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3), pages=[3]))
    assert status == 400
    assert "3 page" in answer["message"]


@pytest.mark.parametrize(
    ("data", "mime", "size"),
    [(png_bytes((64, 48)), "image/png", (64, 48)), (jpeg_bytes((30, 20)), "image/jpeg", (30, 20))],
)
async def test_image_is_one_page_with_its_size_and_hash(
    serve: Serve, client: aiohttp.ClientSession, data: bytes, mime: str, size: tuple[int, int]
) -> None:
    server = await serve()
    status, answer, _ = await post(client, server, ocr_body(image_doc(data, mime)))
    assert status == 200
    [page] = answer["pages"]
    assert page["index"] == 0
    assert sha(data)[:12] in page["markdown"]
    assert page["dimensions"] == {"dpi": 200, "width": size[0], "height": size[1]}
    assert server.stats.ok_by_document == {sha(data): 1}


async def test_image_url_object_form_and_azure_route_are_accepted(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(model_suffix="-completion")
    data = png_bytes()
    document = {"image_url": {"url": image_doc(data)["image_url"], "detail": "high"}}
    url = server.url + "/providers/mistral/azure/ocr?api-version=2024-05-01-preview"
    async with client.post(url, json={"model": "mistral-ocr-2503", "document": document}) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["model"] == "mistral-ocr-2503-completion"
    assert server.stats.requests == 1


async def test_cheap_mode_counts_pages_without_reading_text(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(cheap=True)
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3)))
    assert status == 200
    assert [p["index"] for p in answer["pages"]] == [0, 1, 2]
    assert all("marker" not in p["markdown"] for p in answer["pages"])
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3), pages="2"))
    assert [p["index"] for p in answer["pages"]] == [2]
    assert server.stats.pages_answered == 4


async def test_cheap_mode_counts_pages_of_a_pdf_with_compressed_objects(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(PDF3)))
    buf = io.BytesIO()
    writer.write(buf)
    data = buf.getvalue()
    server = await serve(cheap=True)
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(data)))
    assert status == 200
    assert len(answer["pages"]) == 3


async def test_bodies_of_several_megabytes_are_accepted(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    # aiohttp refuses bodies over 1 MiB by default; real requests carry up to 50 MB.
    data = PDF3 + b"\n%" + b"x" * 3_000_000 + b"\n"
    server = await serve(cheap=True)
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(data)))
    assert status == 200
    assert len(answer["pages"]) == 3
    assert server.stats.bytes_received > 4_000_000
    assert server.stats.ok_by_document == {sha(data): 1}


# --- request validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc", "type_"),
    [
        ({"model": "m", "document": {}, "colour": 1}, ["body", "colour"], "extra_forbidden"),
        ({"model": "m"}, ["body", "document"], "missing"),
        ({"document": pdf_doc(PDF3)}, ["body", "model"], "missing"),
        ([1, 2], ["body"], "model_attributes_type"),
        ({"model": "m", "document": {"url": "x"}}, ["body", "document"], "union_tag_not_found"),
        ({"model": "m", "document": {**pdf_doc(PDF3), "type": "image_url"}},
         ["body", "document", "type"], "literal_error"),
        ({"model": "m", "document": {**pdf_doc(PDF3), "extra": 1}},
         ["body", "document", "extra"], "extra_forbidden"),
        ({"model": "m", "document": pdf_doc(PDF3), "pages": "1-x"}, ["body", "pages"],
         "value_error"),
        ({"model": "m", "document": pdf_doc(PDF3), "include_image_base64": "yes"},
         ["body", "include_image_base64"], "bool_type"),
        ({"model": "m", "document": pdf_doc(PDF3), "table_format": "csv"},
         ["body", "table_format"], "enum"),
    ],
)
async def test_invalid_requests_get_fastapi_style_422(
    serve: Serve, client: aiohttp.ClientSession, body: Any, loc: list[Any], type_: str
) -> None:
    server = await serve()
    status, answer, _ = await post(client, server, body)
    assert status == 422
    assert {"loc": loc, "type": type_} in [
        {"loc": d["loc"], "type": d["type"]} for d in answer["detail"]
    ]
    assert all(isinstance(d["msg"], str) and d["msg"] for d in answer["detail"])
    assert server.stats.by_status == {"422": 1}
    assert server.stats.answered_ok == 0


def _encrypted_pdf() -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(PDF3)))
    writer.encrypt("secret")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"document_url": "https://example.com/a.pdf"}, "cannot fetch"),
        ({"document_url": "data:application/pdf;base64,@@not base64@@"}, "base64"),
        ({"document_url": "data:application/pdf,%PDF-1.4"}, "base64"),
        (pdf_doc(png_bytes()), "PDF"),
        (pdf_doc(b"%PDF-1.7\n" + b"garbage " * 100), "could not be read"),
        (pdf_doc(_encrypted_pdf()), "encrypted"),
        (image_doc(b"plain text, not an image"), "image"),
        ({"type": "file", "file_id": "0b7d7a0e-2f3c-4d84-9d0f-4a3f2d5b9a11"}, "data URL"),
    ],
)
async def test_unusable_documents_get_400_with_a_reason(
    serve: Serve, client: aiohttp.ClientSession, document: dict[str, Any], words: str
) -> None:
    server = await serve()
    status, answer, _ = await post(client, server, ocr_body(document))
    assert status == 400
    assert words in answer["message"]
    assert server.stats.ok_by_document == {}


async def test_non_json_body_gets_400(serve: Serve, client: aiohttp.ClientSession) -> None:
    server = await serve()
    async with client.post(server.url + "/v1/ocr", data=b"{not json",
                           headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400


# --- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"api-key": "wrong"}, 401),
        ({"Authorization": "sekrit"}, 401),
        ({"Authorization": "Basic sekrit"}, 401),
        ({"Authorization": "Bearer sekrit"}, 200),
        ({"api-key": "sekrit"}, 200),
    ],
)
async def test_api_key_is_required_as_bearer_or_api_key_header(
    serve: Serve, client: aiohttp.ClientSession, headers: dict[str, str], expected: int
) -> None:
    server = await serve(api_key="sekrit")
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3)), headers=headers)
    assert status == expected
    if expected == 401:
        assert answer == {"detail": "Unauthorized"}


async def test_auth_is_checked_before_validation(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(api_key="sekrit")
    status, _, _ = await post(client, server, {"bogus": True})
    assert status == 401


async def test_key_is_revoked_after_n_answers(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(fail_auth_after=2)
    statuses = [(await post(client, server, ocr_body(pdf_doc(PDF3))))[0] for _ in range(4)]
    assert statuses == [200, 200, 401, 401]


async def test_key_revocation_is_exact_under_concurrency(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(fail_auth_after=1, latency=0.05)
    results = await asyncio.gather(
        *(post(client, server, ocr_body(pdf_doc(PDF3))) for _ in range(6))
    )
    assert sorted(r[0] for r in results) == [200, 401, 401, 401, 401, 401]
    assert server.stats.answered_ok == 1


# --- rate limit ----------------------------------------------------------------------------


async def test_requests_over_the_rate_limit_get_429_with_retry_after(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(rps_limit=2)
    body = ocr_body(image_doc(png_bytes()))
    results = await asyncio.gather(*(post(client, server, body) for _ in range(6)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 200, 429, 429, 429, 429]
    for status, answer, resp in results:
        if status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            assert answer["message"]
        else:
            assert resp.headers["x-ratelimit-limit-req-minute"] == "120"
            assert int(resp.headers["x-ratelimit-remaining-req-minute"]) in (118, 119)
    assert server.stats.by_status == {"200": 2, "429": 4}
    assert server.stats.requests == 6
    # At 2 requests/s a token is back after 0.5 s.
    await asyncio.sleep(0.55)
    assert (await post(client, server, body))[0] == 200


async def test_retry_after_can_be_overridden(serve: Serve, client: aiohttp.ClientSession) -> None:
    server = await serve(rps_limit=1, retry_after=7)
    body = ocr_body(image_doc(png_bytes()))
    assert (await post(client, server, body))[0] == 200
    status, _, resp = await post(client, server, body)
    assert status == 429
    assert resp.headers["Retry-After"] == "7"
    assert resp.headers["retry-after-ms"] == "7000"


# --- faults --------------------------------------------------------------------------------


async def _client_sees(client: aiohttp.ClientSession, server: FakeServer) -> str:
    """What a client makes of one request: a status, or the kind of failure it met."""
    timeout = aiohttp.ClientTimeout(total=0.3)
    try:
        async with client.post(server.url + "/v1/ocr", json=ocr_body(pdf_doc(PDF3)),
                               timeout=timeout) as resp:
            if resp.status != 200:
                return str(resp.status)
            try:
                answer = await resp.json()
            except json.JSONDecodeError:
                return "json error"
            return "ok" if "pages" in answer else "no pages"
    except aiohttp.ClientConnectionError:
        return "connection error"
    except TimeoutError:
        return "timeout"


@pytest.mark.parametrize(
    ("kind", "seen", "counted"),
    [
        ("500", "500", "500"),
        ("503", "503", "503"),
        ("502", "502", "502"),
        ("504", "504", "504"),
        ("408", "408", "408"),
        ("reset", "connection error", "reset"),
        ("malformed", "json error", "200"),
        ("wrong_shape", "no pages", "200"),
        ("hang", "timeout", "hang"),
    ],
)
async def test_each_fault_is_what_the_client_sees(
    serve: Serve, client: aiohttp.ClientSession, kind: str, seen: str, counted: str
) -> None:
    server = await serve(fault_rate=1.0, faults=(kind,))
    assert await _client_sees(client, server) == seen
    assert server.stats.by_status == {counted: 1}
    assert server.stats.faults_injected == {kind: 1}
    assert server.stats.answered_ok == 0
    assert server.stats.ok_by_document == {}


async def test_faults_follow_the_seed_and_the_rate(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    async def run() -> list[str]:
        server = await serve(fault_rate=0.5, faults=("503", "500"), seed=42)
        return [await _client_sees(client, server) for _ in range(20)]

    first, second = await run(), await run()
    assert first == second
    assert {"ok", "500", "503"} <= set(first)


async def test_a_client_giving_up_frees_a_hanging_request(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(fault_rate=1.0, faults=("hang",))
    assert await _client_sees(client, server) == "timeout"
    deadline = time.monotonic() + 2.0
    while server.stats.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert server.stats.in_flight == 0


async def test_stop_releases_a_hanging_request(client: aiohttp.ClientSession) -> None:
    server = await start_fake_server(FakeServerOptions(fault_rate=1.0, faults=("hang",)))
    request = asyncio.create_task(_client_sees(client, server))
    while server.stats.by_status.get("hang") != 1:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 1.0
    assert await request == "connection error"


async def test_cut_fault_resets_the_connection_in_the_middle_of_the_body(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(fault_rate=1.0, faults=("cut",))
    async with client.post(server.url + "/v1/ocr", json=ocr_body(pdf_doc(PDF3))) as resp:
        assert resp.status == 200  # the headers arrived ...
        assert int(resp.headers["Content-Length"]) > 0
        with pytest.raises(aiohttp.ClientError):  # ... the body never completes
            await resp.read()
    assert server.stats.by_status == {"cut": 1}
    assert server.stats.faults_injected == {"cut": 1}
    assert server.stats.ok_by_document == {}


async def test_short_fault_answers_a_valid_response_missing_the_last_page(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(fault_rate=1.0, faults=("short",))
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3)))
    assert status == 200
    assert [p["index"] for p in answer["pages"]] == [0, 1]
    assert answer["usage_info"]["pages_processed"] == 2
    assert server.stats.by_status == {"200": 1}
    assert server.stats.ok_by_document == {}, "a wrong answer is not a valid one"


async def test_trickle_fault_dribbles_out_a_valid_answer(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(fault_rate=1.0, faults=("trickle",), trickle_seconds=0.4)
    started = time.monotonic()
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3)))
    assert status == 200
    assert time.monotonic() - started >= 0.35
    assert [p["markdown"] for p in answer["pages"]] == [page_text("A", i) for i in range(3)]
    assert server.stats.ok_by_document == {sha(PDF3): 1}
    # A client that gives up half-way was delivered nothing: not counted as answered.
    server.options.trickle_seconds = 5.0
    assert await _client_sees(client, server) == "timeout"
    assert server.stats.ok_by_document == {sha(PDF3): 1}
    assert server.stats.faults_injected == {"trickle": 2}


@pytest.mark.parametrize("status", ["408", "429", "500", "502", "503", "504"])
@pytest.mark.parametrize(
    ("style", "content_type"),
    [("json", "application/json"), ("text", "text/plain"), ("html", "text/html")],
)
async def test_fault_body_sends_every_status_in_the_asked_style(
    serve: Serve, client: aiohttp.ClientSession, status: str, style: str, content_type: str
) -> None:
    server = await serve(fault_rate=1.0, faults=(status,), fault_body=style)
    got, answer, resp = await post(client, server, ocr_body(pdf_doc(PDF3)))
    assert got == int(status)
    assert resp.content_type == content_type
    if style == "json":
        assert answer["object"] == "error" and answer["code"] == status
    elif style == "html":
        assert answer.startswith("<html>") and status in answer
    else:
        assert answer.startswith(status)
    assert ("Retry-After" in resp.headers) == (status == "429")


async def test_fault_after_and_fault_limit_make_a_window_of_faults(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(fault_rate=1.0, faults=("503",), fault_after=2, fault_limit=3)
    body = ocr_body(pdf_doc(PDF3))
    statuses = [(await post(client, server, body))[0] for _ in range(7)]
    assert statuses == [200, 200, 503, 503, 503, 200, 200]
    server.reset()  # counts start again
    statuses = [(await post(client, server, body))[0] for _ in range(4)]
    assert statuses == [200, 200, 503, 503]


async def test_retry_after_styles_seconds_alone_or_an_http_date(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    body = ocr_body(image_doc(png_bytes()))
    server = await serve(rps_limit=1, retry_after=3, retry_after_style="seconds")
    assert (await post(client, server, body))[0] == 200
    status, _, resp = await post(client, server, body)
    assert status == 429
    assert resp.headers["Retry-After"] == "3" and "retry-after-ms" not in resp.headers

    server = await serve(rps_limit=1, retry_after=3, retry_after_style="http-date")
    assert (await post(client, server, body))[0] == 200
    before = time.time()
    status, _, resp = await post(client, server, body)
    assert status == 429 and "retry-after-ms" not in resp.headers
    when = email.utils.parsedate_to_datetime(resp.headers["Retry-After"]).timestamp()
    assert before + 3 <= when <= time.time() + 4


async def test_revoked_key_can_be_refused_with_403(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(fail_auth_after=1, auth_fail_status=403)
    results = [await post(client, server, ocr_body(pdf_doc(PDF3))) for _ in range(3)]
    assert [r[0] for r in results] == [200, 403, 403]
    assert results[1][1] == {"detail": "Forbidden"}


# --- images --------------------------------------------------------------------------------


async def test_images_are_numbered_across_the_response_and_linked_from_markdown(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(images_per_page=2)
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3)))
    assert status == 200
    ids = [[im["id"] for im in p["images"]] for p in answer["pages"]]
    assert ids == [["img-0.jpeg", "img-1.jpeg"], ["img-2.jpeg", "img-3.jpeg"],
                   ["img-4.jpeg", "img-5.jpeg"]]
    for page in answer["pages"]:
        for im in page["images"]:
            assert f"![{im['id']}]({im['id']})" in page["markdown"]
            assert im["image_base64"] is None
            assert 0 <= im["top_left_x"] < im["bottom_right_x"] <= page["dimensions"]["width"]
            assert 0 <= im["top_left_y"] < im["bottom_right_y"] <= page["dimensions"]["height"]


async def test_image_base64_only_when_asked_and_is_a_real_jpeg(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(images_per_page=1)
    body = ocr_body(pdf_doc(PDF3), include_image_base64=True, image_limit=2)
    status, answer, _ = await post(client, server, body)
    assert status == 200
    images = [im for p in answer["pages"] for im in p["images"]]
    assert len(images) == 2  # image_limit
    prefix = "data:image/jpeg;base64,"
    assert images[0]["image_base64"].startswith(prefix)
    data = base64.b64decode(images[0]["image_base64"][len(prefix):])
    assert Image.open(io.BytesIO(data)).format == "JPEG"


async def test_hostile_image_ids_try_to_escape(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(images_per_page=2, image_id_style="hostile")
    status, answer, _ = await post(client, server, ocr_body(pdf_doc(PDF3), pages=[0, 1]))
    assert status == 200
    ids = [im["id"] for p in answer["pages"] for im in p["images"]]
    assert ids == ["../../escape-0.jpeg", "/tmp/abs-1.jpeg", "../../escape-2.jpeg",
                   "/tmp/abs-3.jpeg"]
    assert "![/tmp/abs-1.jpeg](/tmp/abs-1.jpeg)" in answer["pages"][0]["markdown"]


# --- counters ------------------------------------------------------------------------------


async def test_ok_by_document_counts_each_paid_answer_and_reset_zeros_it(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve()
    other = pdf_bytes(["other"])
    for data in (PDF3, other, PDF3):
        assert (await post(client, server, ocr_body(pdf_doc(data))))[0] == 200
    await post(client, server, {"model": "m"})  # a 422 is not an answer
    async with client.get(server.url + "/_stats") as resp:
        stats = await resp.json()
    assert stats["ok_by_document"] == {sha(PDF3): 2, sha(other): 1}
    assert stats["requests"] == 4
    assert stats["answered_ok"] == 3
    assert stats["pages_answered"] == 7
    assert stats["by_status"] == {"200": 3, "422": 1}
    assert stats["bytes_received"] > 2 * len(PDF3)
    async with client.post(server.url + "/_reset") as resp:
        assert resp.status == 200
    assert server.stats.requests == 0
    assert server.stats.ok_by_document == {}
    assert server.stats.bytes_received == 0


async def test_latency_and_max_concurrent_with_a_responsive_server(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    server = await serve(latency=0.2)
    started = time.monotonic()
    pending = [asyncio.create_task(post(client, server, ocr_body(pdf_doc(PDF3))))
               for _ in range(4)]
    while server.stats.in_flight < 4:
        await asyncio.sleep(0.01)
    async with client.get(server.url + "/health") as resp:
        assert resp.status == 200
    assert not any(task.done() for task in pending)  # /health answered while OCR waits
    results = await asyncio.gather(*pending)
    assert [r[0] for r in results] == [200] * 4
    assert time.monotonic() - started >= 0.2
    assert server.stats.max_concurrent == 4
    assert server.stats.in_flight == 0


# --- options and CLI -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [{"faults": ("boom",)}, {"fault_rate": 1.5}, {"latency": 1, "latency_max": 0.5},
     {"image_id_style": "evil"}, {"images_per_page": -1}, {"retry_after_style": "ms"},
     {"fault_body": "xml"}, {"fault_after": -1}, {"fault_limit": -1}, {"trickle_seconds": -1},
     {"auth_fail_status": 500}],
)
def test_bad_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FakeServerOptions(**bad)


def test_options_repr_hides_the_key() -> None:
    assert "sekrit" not in repr(FakeServerOptions(api_key="sekrit"))


def test_cli_help_and_usage_errors_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--fault-rate" in capsys.readouterr().out
    assert main(["--fault-rate", "2"]) == 2
    assert main(["--faults", "500,boom"]) == 2


def test_cli_fault_knobs_reach_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.fakeserver.cli import build_parser, options_from_args

    args = build_parser().parse_args([
        "--fault-rate", "1", "--faults", "cut,trickle,short,503", "--fault-body", "html",
        "--fault-after", "2", "--fault-limit", "5", "--trickle-seconds", "0.5",
        "--retry-after-style", "http-date", "--fail-auth-after", "3", "--auth-fail-status", "403",
    ])
    options = options_from_args(args)
    assert options.faults == ("cut", "trickle", "short", "503")
    assert (options.fault_body, options.fault_after, options.fault_limit) == ("html", 2, 5)
    assert (options.trickle_seconds, options.retry_after_style) == (0.5, "http-date")
    assert (options.fail_auth_after, options.auth_fail_status) == (3, 403)
    assert main(["--fault-body", "xml"]) == 2
    assert main(["--auth-fail-status", "500"]) == 2
    capsys.readouterr()


async def test_cli_serves_until_sigterm(client: aiohttp.ClientSession) -> None:
    code = "import sys; from pipeline.fakeserver import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "MISTRAL_API_KEY": "cli-sekrit"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "--port", "0", "--images-per-page", "1",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()  # type: ignore[union-attr]
        assert line.startswith("fake-server listening on http://127.0.0.1:")
        url = line.split()[-1]
        body = ocr_body(pdf_doc(PDF3))
        async with client.post(url + "/v1/ocr", json=body) as resp:
            assert resp.status == 401
        headers = {"Authorization": "Bearer cli-sekrit"}
        async with client.post(url + "/v1/ocr", json=body, headers=headers) as resp:
            assert resp.status == 200
            assert len((await resp.json())["pages"][0]["images"]) == 1
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert out == b""  # nothing after the one listening line
    assert b"cli-sekrit" not in err


@pytest.mark.parametrize(("options", "message"), [
    ({"latency": -1}, "latency must be >= 0"),
    ({"stuck_request": 0}, "stuck_request must be >= 1 (admitted requests are numbered from 1)"),
    ({"rate_limit_mode": "sliding-window", "rpm_limit": 0}, "rpm_limit must be >= 1"),
    ({"fault_limit": -2}, "fault_limit must be >= 0"),
    ({"auth_fail_status": 500}, "auth_fail_status must be one of [401, 403]"),
    ({"latency_distribution": "pareto"}, "latency_distribution must be one of"),
    ({"rpm_limit": 60}, "rpm_limit needs rate_limit_mode 'sliding-window'"),
    ({"latency": 0.5, "latency_max": 0.1}, "latency_max must be >= latency"),
])
def test_invalid_options_are_refused_naming_the_option(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FakeServerOptions(**options)


def test_unset_optional_bounds_pass() -> None:
    opts = FakeServerOptions(fault_limit=None, retry_after=None, stuck_request=None)
    assert opts.fault_limit is None and opts.stuck_request is None
