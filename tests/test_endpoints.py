"""Several endpoints (`endpoints:`): one limiter each, work to whichever has room, a failing or
refused endpoint drained while the others finish the run. Real fake servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipeline.commands.status import status
from pipeline.errors import ConfigError, ExitCode
from tests.conftest import TEST_KEY, make_settings, run_pipeline
from tests.pdfgen import write_pdf

STRICT = {"rate_limit_mode": "sliding-window", "rps_limit": 10, "cheap": True}


def documents(folder: Path, count: int) -> None:
    folder.mkdir()
    for n in range(count):
        write_pdf(folder / f"d{n:03d}.pdf", f"d{n}", 1)


def endpoints(*servers: Any, keys: list[str] | None = None) -> list[dict[str, Any]]:
    keys = keys or [TEST_KEY] * len(servers)
    return [{"url": s.url, "api_key": k, "name": f"e{i}"} for i, (s, k) in
            enumerate(zip(servers, keys, strict=True))]


async def test_work_is_spread_over_every_endpoint_with_one_limiter_each(tmp_path: Path,
                                                                         fake_server) -> None:
    a, b = await fake_server(**STRICT), await fake_server(**STRICT)
    documents(tmp_path / "in", 60)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", a.url, rps=None,
                                workers=None, max_in_flight=None, endpoints=endpoints(a, b))
    assert (report.exit_code, report.documents_done) == (ExitCode.OK, 60)
    figures = report.requests["endpoints"]
    assert set(figures) == {"e0", "e1"}
    assert figures["e0"]["pages"] + figures["e1"]["pages"] == 60
    assert figures["e0"]["pages"] >= 5 and figures["e1"]["pages"] >= 5, figures
    # Each server's own strict window was respected by its own limiter.
    assert a.stats.max_admitted_1s <= 10 and b.stats.max_admitted_1s <= 10


async def test_a_key_refused_by_one_endpoint_drains_it_and_the_other_does_the_work(
        tmp_path: Path, fake_server) -> None:
    good = await fake_server(api_key=TEST_KEY)
    refusing = await fake_server(api_key="another-key")
    documents(tmp_path / "in", 20)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", good.url, rps=None,
                                endpoints=endpoints(good, refusing, keys=[TEST_KEY, "wrong-key"]))
    assert (report.exit_code, report.documents_done) == (ExitCode.OK, 20)
    figures = report.requests["endpoints"]
    assert figures["e1"]["state"] == "drained" and "refused the API key" in figures["e1"]["reason"]
    assert figures["e0"]["pages"] == 20
    assert "wrong-key" not in str(report.to_dict())
    # The operator sees it the next morning: in status --json and in the metrics file.
    shown = status(tmp_path / "out")
    assert shown["endpoints"]["e1"]["state"] == "drained"
    metrics = (tmp_path / "out" / ".ocr-pipeline" / "metrics.prom").read_text()
    assert 'ocr_pipeline_endpoint_up{endpoint="e1"} 0.0' in metrics
    assert 'ocr_pipeline_endpoint_pages{endpoint="e0"} 20.0' in metrics


async def test_every_endpoint_refusing_its_key_is_fatal(tmp_path: Path, fake_server) -> None:
    a = await fake_server(api_key="k1")
    b = await fake_server(api_key="k2")
    documents(tmp_path / "in", 5)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", a.url, rps=None,
                                endpoints=endpoints(a, b, keys=["nope-1", "nope-2"]))
    assert report.exit_code == ExitCode.FATAL
    assert report.documents_done == 0


async def test_an_endpoint_killed_mid_run_leaves_every_document_to_the_other(
        tmp_path: Path, fake_server) -> None:
    steady = await fake_server(latency=0.05)
    doomed = await fake_server(latency=0.05)
    documents(tmp_path / "in", 80)

    async def kill_soon() -> None:
        while doomed.stats.answered_ok < 5:
            await asyncio.sleep(0.01)
        await doomed.stop()

    killer = asyncio.create_task(kill_soon())
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", steady.url, rps=None,
                                retry_initial=0.01, retry_max=0.05,
                                endpoints=endpoints(steady, doomed))
    await killer
    assert (report.exit_code, report.documents_done, report.documents_failed) == (ExitCode.OK, 80, 0)
    figures = report.requests["endpoints"]
    assert figures["e1"]["failures"] >= 1, figures
    assert figures["e0"]["pages"] + figures["e1"]["pages"] == 80


def test_endpoints_are_validated_where_they_are_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs an http"):
        make_settings(tmp_path, tmp_path / "o", "http://127.0.0.1:1",
                      endpoints=[{"url": "ftp://x", "api_key": "k"}])
    with pytest.raises(ConfigError, match="batch mode uses one endpoint"):
        make_settings(tmp_path, tmp_path / "o", "http://127.0.0.1:1", mode="batch",
                      endpoints=[{"url": "http://127.0.0.1:1", "api_key": "k"}])
