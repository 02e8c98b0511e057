"""The run report says the pace the run ended at and the limit it ran under, and where that
limit came from (announced in headers, learned from 429s, set by the operator): what an
operator reads the next morning to know what the service allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.run.report import rate_line
from tests.conftest import run_pipeline
from tests.pdfgen import write_pdf

STRICT_20 = {"rate_limit_mode": "sliding-window", "rps_limit": 20, "latency": 0.05,
             "latency_max": 0.15, "latency_distribution": "uniform", "cheap": True}


def tree(root: Path, count: int) -> Path:
    for n in range(count):
        write_pdf(root / f"doc{n:03d}.pdf", f"doc{n}", 1)
    return root


@pytest.mark.parametrize(("headers", "source"), [(True, "headers"), (False, "429s")])
async def test_the_report_names_the_limit_and_where_it_came_from(
        tmp_path: Path, fake_server, headers: bool, source: str) -> None:
    server = await fake_server(ratelimit_headers=headers, **STRICT_20)
    report = await run_pipeline(tree(tmp_path / "in", 80), tmp_path / "out", server.url,
                                rps=None, workers=None, max_in_flight=None)
    assert report.exit_code == 0, report.failures
    limit = report.requests["rate_limit"]
    assert limit["limit_source"] == source
    per_second = [w for w in limit["windows"] if w["seconds"] == 1.0 and w["source"] == source]
    assert per_second and 19 <= per_second[0]["count"] <= 20, limit
    assert 0.9 * 20 <= limit["rate_per_second"] <= 20
    assert limit["rejections"] == report.requests["throttled"]
    assert f"per 1 s ({source})" in "\n".join(report.summary_lines())


async def test_a_configured_rate_is_reported_as_configured(tmp_path: Path, fake_server) -> None:
    server = await fake_server(latency=0.01)
    report = await run_pipeline(tree(tmp_path / "in", 5), tmp_path / "out", server.url, rps=7)
    limit = report.requests["rate_limit"]
    assert limit["limit_source"] == "configured"
    assert limit["windows"] == [{"count": 7, "seconds": 1.0, "source": "configured"}]
    assert rate_line(limit).startswith("rate: 6.93 a second at the end; limit 7 per 1 s")


def test_the_rate_line_when_nothing_limits() -> None:
    assert rate_line({"limit_source": "none", "rate_per_second": 0.0, "windows": []}) == \
        "rate: no limit of ours; limit none known"
