"""Several endpoints, one server SIGKILLed mid-run: two real `fake-server` processes on 127.0.0.1,
the real CLI with an `endpoints:` config; the other endpoint finishes every document."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import REPO, TEST_KEY, pipeline_env
from tests.pdfgen import write_pdf

DOCS = 60


@contextmanager
def fake_server_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m pipeline fake-server --port 0 ...` in its own process; killed on exit."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "fake-server", "--port", "0", *args],
                            cwd=REPO, env=pipeline_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fake-server listening on http://127.0.0.1:"), line
        yield proc, line.split()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def server_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_stats", timeout=10) as reply:
        return json.loads(reply.read())


def test_a_server_killed_mid_run_leaves_every_document_to_the_other_endpoint(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    for n in range(DOCS):
        write_pdf(inp / f"d{n:03d}.pdf", f"d{n}", 1)
    latency = ["--latency", "0.2", "--latency-max", "0.4", "--latency-distribution", "uniform",
               "--seed", "3"]
    with fake_server_process(*latency) as (_, steady_url), \
            fake_server_process(*latency) as (doomed, doomed_url):
        config = tmp_path / "two.yaml"
        config.write_text(
            "backend: mistral\nmodel: mistral-ocr-latest\nendpoints:\n"
            f"  - {{name: e0, url: '{steady_url}', api_key: '${{MISTRAL_API_KEY}}'}}\n"
            f"  - {{name: e1, url: '{doomed_url}', api_key: '${{MISTRAL_API_KEY}}'}}\n")
        run = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--input", str(inp),
             "--output", str(tmp_path / "out"), "--progress", "off"],
            cwd=REPO, env=pipeline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            answered = 0
            while run.poll() is None and answered < 3:
                answered = server_stats(doomed_url)["answered_ok"]
                time.sleep(0.02)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
            stdout, stderr = run.communicate(timeout=180)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        steady_answered = server_stats(steady_url)["answered_ok"]
    assert run.returncode == 0, stdout + stderr
    assert TEST_KEY not in stdout + stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.pdf.json")) == [f"d{n:03d}.pdf.json" for n in range(DOCS)]
    report = json.loads(next((out / ".ocr-pipeline/runs").glob("*.json")).read_text())
    assert (report["documents_done"], report["documents_failed"]) == (DOCS, 0)
    figures = report["requests"]["endpoints"]
    # The dead endpoint's failures are on record; it did its share only until it died.
    assert figures["e1"]["failures"] >= 1, figures
    assert 3 <= figures["e1"]["pages"] < figures["e0"]["pages"], figures
    assert figures["e0"]["pages"] + figures["e1"]["pages"] == DOCS
    assert figures["e0"]["pages"] <= steady_answered
    assert figures["e0"]["failures"] == 0
    shown = subprocess.run([sys.executable, "-m", "pipeline", "status", "--output", str(out),
                            "--json"], cwd=REPO, env=pipeline_env(), capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["endpoints"]["e1"]["failures"] == figures["e1"]["failures"]


async def test_a_chunk_that_failed_on_a_dead_endpoint_tries_the_other_next(tmp_path: Path,
                                                                           fake_server) -> None:
    """Two tries per chunk: a chunk whose first try hit the dead endpoint must spend its second
    on the live one, or its document fails."""
    from tests.conftest import run_pipeline

    steady = await fake_server(latency=0.1)
    doomed = await fake_server(latency=0.1)
    inp = tmp_path / "in"
    inp.mkdir()
    for n in range(DOCS):
        write_pdf(inp / f"d{n:03d}.pdf", f"d{n}", 1)

    async def kill_soon() -> None:
        while doomed.stats.answered_ok < 3:
            await asyncio.sleep(0.01)
        await doomed.stop()

    killer = asyncio.create_task(kill_soon())
    report = await run_pipeline(inp, tmp_path / "out", steady.url, rps=None, workers=None,
                                max_in_flight=None, retry_attempts=2,
                                endpoints=[{"url": s.url, "api_key": TEST_KEY, "name": f"e{i}"}
                                           for i, s in enumerate((steady, doomed))])
    await killer
    assert (report.documents_done, report.documents_failed) == (DOCS, 0), report.failures
    assert report.requests["endpoints"]["e1"]["failures"] >= 1


async def test_after_its_pause_one_chunk_probes_a_dead_endpoint_and_the_others_keep_away(
        tmp_path: Path, fake_server) -> None:
    """A paused lane gets one probe when the pause is over, not a burst of chunks that all fail."""
    import hashlib

    from pipeline.models import Chunk
    from pipeline.run.transports import endpoint_lanes
    from pipeline.transport.endpoints import BREAKER_SECONDS, MultiEndpointTransport
    from pipeline.transport.retry import RetryPolicy
    from tests.conftest import make_settings
    from tests.pdfgen import page_text, pdf_bytes

    dead = await fake_server()
    live = await fake_server(latency=0.05)
    await dead.stop()
    settings = make_settings(tmp_path, tmp_path / "out", live.url, rps=None, endpoints=[
        {"url": dead.url, "api_key": TEST_KEY, "name": "dead"},
        {"url": live.url, "api_key": TEST_KEY, "name": "live"}])
    now = [1000.0]
    transport = MultiEndpointTransport(endpoint_lanes(settings), RetryPolicy(6, 0.01, 0.05),
                                       clock=lambda: now[0])
    gone, alive = transport.lanes
    data = pdf_bytes([page_text("p.pdf", 0)])
    chunk = Chunk("p.pdf", 0, 0, 1, "application/pdf", data, hashlib.sha256(data).hexdigest())
    try:
        for _ in range(20):  # until the dead lane's breaker opens
            await asyncio.gather(*(transport.answer(chunk) for _ in range(6)))
            if gone.state(now[0]) == "open":
                break
        assert gone.state(now[0]) == "open", transport.endpoint_figures()
        failures, pages = gone.failures, alive.pages
        now[0] += BREAKER_SECONDS + 1  # the pause is over
        await asyncio.gather(*(transport.answer(chunk) for _ in range(8)))
        assert gone.failures == failures + 1  # one probe, not a burst
        assert alive.pages == pages + 8
        assert gone.state(now[0]) == "open"  # the failed probe paused it again
    finally:
        transport.stop()
        await transport.close()


async def test_chunks_waiting_for_an_endpoint_that_pauses_move_on_without_being_sent(
        tmp_path: Path, fake_server) -> None:
    """Chunks queued behind a lane's limiter when its breaker opens leave the queue at once: they
    are not released one by one, at that lane's pace, to an endpoint that keeps failing."""
    import hashlib

    from pipeline.models import Chunk
    from pipeline.run.transports import endpoint_lanes
    from pipeline.transport.endpoints import BREAKER_FAILURES, MultiEndpointTransport
    from pipeline.transport.retry import RetryPolicy
    from tests.conftest import make_settings
    from tests.pdfgen import page_text, pdf_bytes

    slow = await fake_server(latency=0.05)
    settings = make_settings(tmp_path, tmp_path / "out", slow.url, rps=None, endpoints=[
        {"url": slow.url, "api_key": TEST_KEY, "name": "slow", "rps": 0.5}])
    transport = MultiEndpointTransport(endpoint_lanes(settings), RetryPolicy(6, 0.01, 0.05))
    (lane,) = transport.lanes
    data = pdf_bytes([page_text("p.pdf", 0)])
    chunk = Chunk("p.pdf", 0, 0, 1, "application/pdf", data, hashlib.sha256(data).hexdigest())
    try:
        tries = [asyncio.create_task(transport._try(lane, chunk)) for _ in range(6)]
        while lane.limiter.waiting < 5:  # one sent, five queued at 1 per 2 s
            await asyncio.sleep(0.01)
        for _ in range(BREAKER_FAILURES):
            transport._failed(lane)  # as if three answers had failed: the breaker opens
        outcomes = await asyncio.wait_for(asyncio.gather(*tries), 30)
    finally:
        transport.stop()
        await transport.close()
    assert sum(o is None for o in outcomes) == 5  # moved, never sent
    assert sum(o is not None for o in outcomes) == 1  # the one already sent got its answer
    assert slow.stats.requests == 1 and lane.stats.attempts == 1
    assert lane.limiter.waiting == 0 and lane.limiter.in_flight == 0
