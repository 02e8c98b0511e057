"""The pipeline against an OCR service that misbehaves: rate limits, errors in every body style,
broken connections and answers, a key revoked mid-run, an endpoint that goes away.

Whatever the fault, every document ends done (every page with its own text) or failed with a
category and a message (and no output); a page whose answer never came is never written empty.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.errors import ExitCode
from pipeline.fakeserver import FakeServerOptions, start_fake_server
from tests.conftest import pipeline_env, run_args, run_pipeline
from tests.faultkit import (
    answers_over_one,
    assert_accounted,
    assert_complete,
    chunk_count,
    free_port,
    make_docs,
    manifest_is_sound,
    manifest_rows,
    output_files,
    persisted_chunks,
    run_to_end,
    watch,
    write_config,
)

# ---- 429 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["seconds", "http-date"])
async def test_a_stray_429_waits_its_retry_after_alone_and_every_document_is_done(
    tmp_path: Path, fake_server, style: str
) -> None:
    # Three workers keep requests flowing; the 5th request gets a 429 saying "come back in 2 s".
    server = await fake_server(latency=0.01, fault_rate=1.0, faults=("429",), fault_after=4,
                               fault_limit=1, retry_after=2, retry_after_style=style)
    timeline = watch(server)
    docs = make_docs(tmp_path / "in", {"a.pdf": 8, "b.pdf": 8, "c.pdf": 8})
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, workers=3,
                                max_in_flight=3, max_pages_per_request=1)

    assert report.exit_code == ExitCode.OK, report.failures
    for rel, pages in docs.items():
        assert_complete(tmp_path / "out", rel, pages)
    assert server.stats.by_status == {"429": 1, "200": 24}
    assert report.requests["throttled"] == 1
    # A stray 429 costs only its own request (docs/rate-limits.md): the others go on during the
    # 2 s, and the refused request comes back only after them. Ignoring the date would be ~1 s.
    (throttled_at,) = timeline.answered("429")
    during = [t for t in timeline.arrivals if throttled_at + 0.05 < t < throttled_at + 1.95]
    assert len(during) >= 3, "the other workers went on while the refused request waited"
    after = [t for t in timeline.arrivals if t >= throttled_at + 1.95]
    assert after, "the refused request came back only after its Retry-After"


async def test_429_storm_longer_than_the_retry_budget_is_waited_out(
    tmp_path: Path, fake_server
) -> None:
    # 24 throttled requests for 3 chunks: each chunk meets far more 429s than its 2 tries, and
    # the storm lasts longer than the endpoint deadline. A 429 is the service pacing us, alive.
    server = await fake_server(fault_rate=1.0, faults=("429",), fault_limit=24, retry_after=0.1)
    docs = make_docs(tmp_path / "in", {"a.pdf": 2, "b.pdf": 1, "c.pdf": 3})
    started = asyncio.get_running_loop().time()
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                retry_attempts=2, endpoint_deadline=0.5, workers=3)
    elapsed = asyncio.get_running_loop().time() - started

    assert elapsed > 0.5, "the storm must outlast the deadline for this test to mean anything"
    assert report.exit_code == ExitCode.OK, (report.message, report.failures)
    assert report.failures == []
    for rel, pages in docs.items():
        assert_complete(tmp_path / "out", rel, pages)
    assert server.stats.by_status["429"] == 24
    assert report.requests["throttled"] == 24
    assert server.stats.answered_ok == 3 and answers_over_one(server.stats) == 0


# ---- HTTP errors ----------------------------------------------------------------------------

STATUSES = ["408", "500", "502", "503", "504"]
BODIES = ["json", "text", "html"]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("status", STATUSES)
async def test_transient_http_error_is_retried_whatever_its_body(
    tmp_path: Path, fake_server, status: str, body: str
) -> None:
    # The first three requests (every chunk's first try) fail, then the service is fine.
    server = await fake_server(fault_rate=1.0, faults=(status,), fault_body=body, fault_limit=3)
    docs = make_docs(tmp_path / "in", {"a.pdf": 3, "b.pdf": 1})
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                max_pages_per_request=2)

    assert report.exit_code == ExitCode.OK, report.failures
    assert_accounted(tmp_path / "out", docs)
    assert manifest_rows(tmp_path / "out")["a.pdf"].state == "done"
    assert server.stats.by_status == {status: 3, "200": 3}
    assert report.requests["by_status"][status] == 3
    assert answers_over_one(server.stats) == 0


@pytest.mark.parametrize(
    ("status", "body", "category"),
    [("500", "json", "backend"), ("502", "html", "backend"), ("503", "text", "backend"),
     ("504", "html", "timeout"), ("408", "text", "timeout")],
)
async def test_persistent_http_error_fails_each_document_alone_with_a_category(
    tmp_path: Path, fake_server, status: str, body: str, category: str
) -> None:
    server = await fake_server(fault_rate=1.0, faults=(status,), fault_body=body)
    docs = make_docs(tmp_path / "in", {"a.pdf": 2, "b.pdf": 1})
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, retry_attempts=3)

    assert report.exit_code == ExitCode.SOME_FAILED
    assert server.stats.requests == 2 * 3, "each document gets exactly its retry budget"
    rows = assert_accounted(tmp_path / "out", docs)
    assert {rel: row.state for rel, row in rows.items()} == {"a.pdf": "failed", "b.pdf": "failed"}
    assert {row.category for row in rows.values()} == {category}
    for failure in report.failures:
        assert failure.category == category
        assert f"HTTP {status}" in failure.message and "3 tries" in failure.message
    assert output_files(tmp_path / "out") == []

    # The service recovers: --retry-failed finishes them.
    server.options.fault_rate = 0.0
    again = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, retry_failed=True)
    assert again.exit_code == ExitCode.OK, again.failures
    for rel, pages in docs.items():
        assert_complete(tmp_path / "out", rel, pages)


# ---- broken connections and answers ---------------------------------------------------------

BROKEN = ["reset", "cut", "hang", "trickle", "malformed", "wrong_shape", "short"]


@pytest.mark.parametrize("kind", BROKEN)
async def test_broken_connection_or_answer_is_retried_and_never_written(
    tmp_path: Path, fake_server, kind: str
) -> None:
    # Two of the three chunks first meet the fault; "hang" and "trickle" outlast the request
    # timeout; "short" answers a page fewer than sent.
    server = await fake_server(fault_rate=1.0, faults=(kind,), fault_limit=2, trickle_seconds=5)
    docs = make_docs(tmp_path / "in", {"a.pdf": 3, "b.pdf": 2})
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                max_pages_per_request=2, request_timeout=0.5)

    assert report.exit_code == ExitCode.OK, report.failures
    assert_accounted(tmp_path / "out", docs)
    assert server.stats.faults_injected == {kind: 2}
    assert report.requests["retries"] == 2
    assert server.stats.answered_ok == chunk_count(docs, 2) == 3
    assert answers_over_one(server.stats) == 0


@pytest.mark.parametrize("kind", ["short", "wrong_shape", "malformed", "cut", "reset"])
async def test_answer_that_stays_broken_fails_the_document_never_an_empty_page(
    tmp_path: Path, fake_server, kind: str
) -> None:
    server = await fake_server(fault_rate=1.0, faults=(kind,))
    docs = make_docs(tmp_path / "in", {"a.pdf": 2, "b.pdf": 3})
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, retry_attempts=2,
                                max_pages_per_request=2)

    assert report.exit_code == ExitCode.SOME_FAILED
    rows = assert_accounted(tmp_path / "out", docs)
    assert {row.state for row in rows.values()} == {"failed"}
    assert {row.category for row in rows.values()} == {"backend"}
    assert output_files(tmp_path / "out") == [], "a page whose answer never came was written"
    assert report.documents_failed == 2 and report.documents_done == 0


async def test_slow_trickle_within_the_request_timeout_is_accepted_and_paid_once(
    tmp_path: Path, fake_server
) -> None:
    server = await fake_server(fault_rate=1.0, faults=("trickle",), trickle_seconds=0.4)
    docs = make_docs(tmp_path / "in", {"a.pdf": 2, "b.pdf": 1})
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, request_timeout=5)

    assert report.exit_code == ExitCode.OK, report.failures
    assert_accounted(tmp_path / "out", docs)
    assert server.stats.requests == 2 and report.requests["retries"] == 0
    assert sorted(server.stats.ok_by_document.values()) == [1, 1]


async def test_mixed_faults_every_document_done_or_failed_with_a_category(
    tmp_path: Path, fake_server
) -> None:
    server = await fake_server(
        fault_rate=0.6, seed=11, trickle_seconds=3,
        faults=("408", "500", "502", "503", "504", "reset", "cut", "hang", "trickle",
                "malformed", "wrong_shape", "short"),
    )
    docs = make_docs(tmp_path / "in", {f"d{i}.pdf": 1 + i % 3 for i in range(10)})
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, retry_attempts=3,
                                max_pages_per_request=2, request_timeout=0.4)

    assert sum(server.stats.faults_injected.values()) >= 5
    rows = assert_accounted(tmp_path / "out", docs)
    assert {row.state for row in rows.values()} <= {"done", "failed"}
    assert report.documents_done + report.documents_failed == len(docs)
    assert report.exit_code == (ExitCode.SOME_FAILED if report.documents_failed else ExitCode.OK)
    assert {f.path for f in report.failures} == {r for r, row in rows.items() if row.state == "failed"}
    assert answers_over_one(server.stats) == 0


# ---- the endpoint goes away ------------------------------------------------------------------


async def test_refused_connections_until_the_endpoint_comes_back_within_the_deadline(
    tmp_path: Path,
) -> None:
    port = free_port()
    docs = make_docs(tmp_path / "in", {"a.pdf": 2, "b.pdf": 1, "c.pdf": 1})
    run = asyncio.create_task(run_pipeline(
        tmp_path / "in", tmp_path / "out", f"http://127.0.0.1:{port}",
        retry_attempts=40, retry_max=0.2, endpoint_deadline=20,
    ))
    await asyncio.sleep(0.8)
    assert not run.done(), "the run must still be trying"
    server = await start_fake_server(FakeServerOptions(), port=port)
    try:
        report = await asyncio.wait_for(run, 30)
    finally:
        await server.stop()
    assert report.exit_code == ExitCode.OK, report.failures
    assert report.requests["by_status"].get("error", 0) >= 3, "connections were refused"
    assert_accounted(tmp_path / "out", docs)
    assert server.stats.answered_ok == 3


@pytest.mark.parametrize("down", ["refused", "503"])
async def test_endpoint_down_past_the_deadline_exits_3_and_the_run_resumes(
    tmp_path: Path, fake_server, down: str
) -> None:
    docs = make_docs(tmp_path / "in", {f"d{i}.pdf": 1 for i in range(8)})
    config = write_config(tmp_path / "c.yaml", endpoint_deadline=1.0, retry_attempts=100,
                          retry_initial=0.05, retry_max=0.2, request_timeout=2)
    if down == "refused":
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
    else:
        server = await fake_server(fault_rate=1.0, faults=("503",), fault_body="html")
        endpoint = server.url
    args = run_args(tmp_path / "in", tmp_path / "out", endpoint, "--config", str(config),
                    "--rps", "0")
    code, output, seconds = await run_to_end(args, pipeline_env(), tmp_path / "run1.log")

    assert code == ExitCode.FATAL, output
    assert seconds < 8, f"took {seconds:.1f} s for a 1 s deadline"
    assert "deadline" in output
    rows = assert_accounted(tmp_path / "out", docs, allow_pending=True)
    # An outage is no document's fault: none is marked failed, all wait for the next run.
    assert {row.state for row in rows.values()} == {"pending"}
    assert output_files(tmp_path / "out") == []
    manifest_is_sound(tmp_path / "out")

    if down == "refused":
        server = await start_fake_server(FakeServerOptions(), port=port)
    else:
        server.options.fault_rate = 0.0
    try:
        report = await run_pipeline(tmp_path / "in", tmp_path / "out", endpoint)
    finally:
        await server.stop()
    assert report.exit_code == ExitCode.OK, report.failures
    assert report.plan == {"resume": len(docs)}
    assert_accounted(tmp_path / "out", docs)


@pytest.mark.parametrize("status", [401, 403])
async def test_key_revoked_mid_run_stops_fast_with_exit_3_keeps_work_and_resumes(
    tmp_path: Path, fake_server, status: int
) -> None:
    max_in_flight = 4
    server = await fake_server(latency=0.02, fail_auth_after=6, auth_fail_status=status)
    docs = make_docs(tmp_path / "in", {f"d{i:02}.pdf": 2 for i in range(10)})
    args = run_args(tmp_path / "in", tmp_path / "out", server.url, "--workers", "2",
                    "--max-in-flight", str(max_in_flight), "--max-pages-per-request", "1",
                    "--rps", "0")
    code, output, seconds = await run_to_end(args, pipeline_env(), tmp_path / "run1.log")

    assert code == ExitCode.FATAL, output
    assert seconds < 8
    assert f"HTTP {status}" in output and "API key" in output
    refused = server.stats.by_status.get(str(status), 0)
    assert 1 <= refused <= max_in_flight, f"{refused} requests refused: not a fast stop"
    assert server.stats.answered_ok == 6
    rows = assert_accounted(tmp_path / "out", docs, allow_pending=True)
    done_before = {rel for rel, row in rows.items() if row.state == "done"}
    assert {row.state for row in rows.values()} <= {"done", "pending"}, "a bad key fails no document"
    persisted = persisted_chunks(tmp_path / "out")
    assert len(persisted) >= 6 - max_in_flight
    manifest_is_sound(tmp_path / "out")
    kept = {rel: (tmp_path / "out" / f"{rel}.json").stat().st_mtime_ns for rel in done_before}

    server.options.fail_auth_after = None  # a new key
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                max_pages_per_request=1)
    assert report.exit_code == ExitCode.OK, report.failures
    assert report.plan.get("unchanged", 0) == len(done_before)
    assert_accounted(tmp_path / "out", docs)
    for rel, mtime in kept.items():
        assert (tmp_path / "out" / f"{rel}.json").stat().st_mtime_ns == mtime, "done work redone"
    for sha in persisted:
        assert server.stats.ok_by_document[sha] == 1, "a persisted chunk was sent again"
    assert len(server.stats.ok_by_document) == chunk_count(docs, 1)
    assert answers_over_one(server.stats) <= max_in_flight
