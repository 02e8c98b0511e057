"""What an operator relies on: dry run, budgets, metrics, progress, status, check-config."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pipeline.errors import ExitCode
from pipeline.run.metrics import METRIC_NAMES
from tests.conftest import (
    REPO,
    load_json,
    pipeline_env,
    run_args,
    run_pipeline,
    run_pipeline_process,
)
from tests.pdfgen import write_pdf


def make_docs(root: Path, count: int, pages: int) -> None:
    for i in range(count):
        write_pdf(root / f"d{i:02}.pdf", f"d{i:02}", pages)


async def test_dry_run_estimates_and_sends_nothing(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 3, 5)  # 15 pages
    (tmp_path / "in/bad.pdf").write_text("no pdf")
    first = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                               max_pages_per_request=2, rps=2, dry_run=True,
                               model="mistral-ocr-latest")
    assert server.stats.requests == 0
    assert first.exit_code == ExitCode.OK
    est = first.estimate
    assert est is not None
    assert (est["documents"], est["pages"], est["requests"]) == (3, 15, 9)  # 3 x ceil(5/2)
    assert est["cost"] == 15 * 4.0 / 1000  # OCR 4.x: $4 per 1,000 pages
    assert est["seconds"] == 9 / 2
    assert first.plan == {"new": 3, "bad_input": 1}
    assert not (tmp_path / "out/d00.pdf.json").exists()
    # The dry run recorded nothing: a real run still sees every document as new.
    real = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert real.plan["new"] == 3
    again = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, dry_run=True)
    assert again.estimate["pages"] == 0 and again.plan["unchanged"] == 3


async def test_dry_run_summary_on_stdout(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 2, 3)
    proc = await run_pipeline_process(
        run_args(tmp_path / "in", tmp_path / "out", server.url, "--dry-run"), pipeline_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert "estimate: 2 documents, 6 pages, 2 requests, $0.02" in proc.stdout
    assert server.stats.requests == 0


async def test_page_budget_is_never_exceeded_and_the_rest_resumes(tmp_path: Path,
                                                                  fake_server) -> None:
    server = await fake_server(latency=0.05)
    make_docs(tmp_path / "in", 10, 3)  # 30 pages, 3 per request
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, max_pages=10,
                                workers=4, max_in_flight=8)
    assert report.exit_code == ExitCode.FATAL
    assert report.outcome == "budget" and "budget reached" in (report.message or "")
    assert server.stats.pages_answered <= 10, "the page budget was exceeded"
    assert server.stats.pages_answered == 9  # three 3-page requests fit, a fourth would not
    rest = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert rest.exit_code == 0
    assert len(list((tmp_path / "out").glob("*.pdf.json"))) == 10
    assert server.stats.pages_answered == 30, "resumed without paying twice"


async def test_cost_budget_converts_to_pages(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 6, 1)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                max_cost=0.004 * 2, price_per_1000_pages=4.0, workers=1)
    assert report.outcome == "budget"
    assert server.stats.pages_answered == 2
    assert report.cost <= 0.008


async def test_runtime_budget_stops_dispatching(tmp_path: Path, fake_server) -> None:
    server = await fake_server(latency=0.3)
    make_docs(tmp_path / "in", 30, 1)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, max_runtime=1.0,
                                workers=2, max_in_flight=2)
    assert report.exit_code == ExitCode.FATAL and report.outcome == "budget"
    assert "max-runtime" in report.message
    assert 1 <= report.documents_done < 30
    assert report.duration_s < 10


async def test_document_above_the_page_cap_fails_as_too_large(tmp_path: Path,
                                                              fake_server) -> None:
    server = await fake_server()
    write_pdf(tmp_path / "in/long.pdf", "long", 12)
    write_pdf(tmp_path / "in/short.pdf", "short", 2)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                max_pages_per_document=10)
    assert [(f.path, f.category) for f in report.failures] == [("long.pdf", "too_large")]
    assert "max_pages_per_document" in report.failures[0].message
    assert server.stats.requests == 1
    allowed = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                 max_pages_per_document=10, allow_large_documents=True,
                                 retry_failed=True)
    assert allowed.exit_code == 0 and allowed.documents_done == 1


async def test_metrics_file_parses_as_prometheus_text(tmp_path: Path, fake_server) -> None:
    server = await fake_server(fault_rate=0.3, faults=("503",), seed=3)
    make_docs(tmp_path / "in", 6, 2)
    (tmp_path / "in/bad.pdf").write_text("not a pdf")
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    text = (tmp_path / "out/.ocr-pipeline/metrics.prom").read_text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    names = {name for name, _ in samples}
    for metric in METRIC_NAMES:
        assert metric in names, f"{metric} missing from the metrics file"
    assert samples[("ocr_pipeline_documents", (("state", "done"),))] == 6
    assert samples[("ocr_pipeline_documents", (("state", "failed"),))] == 1
    assert samples[("ocr_pipeline_pages", (("state", "done"),))] == 12
    assert samples[("ocr_pipeline_requests_total", (("status", "200"),))] == 6
    assert samples[("ocr_pipeline_requests_total", (("status", "503"),))] == \
        server.stats.by_status.get("503", 0)
    assert samples[("ocr_pipeline_retries_total", ())] == report.requests["retries"]
    assert samples[("ocr_pipeline_run_in_progress", ())] == 0
    assert samples[("ocr_pipeline_run_exit_code", ())] == 1
    assert samples[("ocr_pipeline_bytes_sent_total", ())] > 0
    assert samples[("ocr_pipeline_last_success_timestamp_seconds", ())] > 1.7e9


async def test_metrics_file_can_be_moved(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 1, 1)
    target = tmp_path / "textfile/ocr.prom"
    await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, metrics_file=target)
    assert "ocr_pipeline_documents" in target.read_text()
    assert not (tmp_path / "out/.ocr-pipeline/metrics.prom").exists()


async def test_progress_without_a_terminal_is_json_events(tmp_path: Path, fake_server) -> None:
    server = await fake_server(latency=0.1)
    make_docs(tmp_path / "in", 8, 1)
    proc = await run_pipeline_process(
        run_args(tmp_path / "in", tmp_path / "out", server.url, "--workers", "1")
        + ["--config", str(write_config(tmp_path, "progress_interval: 0.2"))],
        pipeline_env(),
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 2
    assert {"documents_total", "documents_done", "pages_done", "pages_per_s", "eta_s",
            "retries"} <= set(progress[-1])
    done = [e["documents_done"] for e in progress]
    assert done == sorted(done) and progress[0]["documents_total"] == 8
    assert "\r" not in proc.stderr


def write_config(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_progress_on_a_terminal_is_a_live_bar(tmp_path: Path, fake_server) -> None:
    server = await fake_server(latency=0.15)
    make_docs(tmp_path / "in", 8, 1)
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline",
        *run_args(tmp_path / "in", tmp_path / "out", server.url, "--workers", "1"),
        stdout=asyncio.subprocess.PIPE, stderr=slave, env=pipeline_env(), cwd=REPO,
    )
    os.close(slave)
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = loop.run_in_executor(None, read)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    await asyncio.wait_for(reader, 10)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, out
    assert "\r" in screen and "docs" in screen and "pages/s" in screen and "ETA" in screen
    assert "/8 docs" in screen
    assert '{"' not in screen, "no JSON events on a terminal"


async def test_status_json_lists_totals_runs_and_failures(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 2, 2)
    (tmp_path / "in/bad.pdf").write_bytes(b"%PDF-1.4\n broken")
    await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    proc = await run_pipeline_process(["status", "--output", str(tmp_path / "out"), "--json"],
                                      pipeline_env())
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["documents"] == {"done": 2, "failed": 1, "pending": 0, "running": 0}
    assert data["totals"]["pages"] == 4
    assert data["failures"][0]["path"] == "bad.pdf" and data["failures"][0]["category"] == "input"
    assert len(data["recent_runs"]) == 1 and data["recent_runs"][0]["exit_code"] == 1
    text = await run_pipeline_process(["status", "--output", str(tmp_path / "out")],
                                      pipeline_env())
    assert "[input] bad.pdf" in text.stdout and "done 2" in text.stdout


async def test_run_report_json_has_failures_by_category(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 1, 1)
    (tmp_path / "in/empty.png").write_bytes(b"")
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    data = load_json(tmp_path / f"out/.ocr-pipeline/runs/{report.run_id}.json")
    assert data["exit_code"] == 1 and data["outcome"] == "some_failed"
    assert data["failures_by_category"] == {
        "input": [{"path": "empty.png", "message": "empty.png: empty file (0 bytes);"
                   " copy it again from its source, or exclude it"}]
    }
    assert data["documents_done"] == 1 and data["pages_done"] == 1


async def test_only_failed_category_retries_just_that_category(tmp_path: Path,
                                                               fake_server) -> None:
    server = await fake_server()
    write_pdf(tmp_path / "in/long.pdf", "long", 4)
    (tmp_path / "in/bad.pdf").write_text("not a pdf")
    await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, max_pages_per_document=2)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                retry_failed=True, retry_categories=["too_large"],
                                allow_large_documents=True)
    assert report.plan == {"retry": 1, "failed_earlier": 1}
    assert report.documents_done == 1


async def test_check_config_names_missing_env_and_never_prints_values(tmp_path: Path,
                                                                       fake_server) -> None:
    server = await fake_server(api_key="ping-key-123456")
    cfg = write_config(tmp_path, "backend: mistral", f"endpoint: {server.url}",
                       "api_key: ${MISTRAL_API_KEY}")
    missing = await run_pipeline_process(["check-config", "--config", str(cfg)],
                                         pipeline_env(api_key=None))
    assert missing.returncode == ExitCode.USAGE
    assert "MISTRAL_API_KEY: MISSING" in missing.stdout
    ok = await run_pipeline_process(["check-config", "--config", str(cfg), "--ping"],
                                    pipeline_env(api_key="ping-key-123456"))
    assert ok.returncode == 0, ok.stdout
    assert "MISTRAL_API_KEY: set" in ok.stdout and "ping ok" in ok.stdout
    assert "ping-key-123456" not in ok.stdout + ok.stderr
    assert server.stats.answered_ok == 1
    refused = await run_pipeline_process(["check-config", "--config", str(cfg), "--ping"],
                                         pipeline_env(api_key="wrong-key-999999"))
    assert refused.returncode == ExitCode.FATAL
    assert "refused the API key" in refused.stdout
    assert "wrong-key-999999" not in refused.stdout + refused.stderr


async def test_config_error_names_the_key_and_file_and_exits_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "backend: local", "workers: many")
    (tmp_path / "in").mkdir()
    proc = await run_pipeline_process(
        ["run", "--config", str(cfg), "--input", str(tmp_path / "in"), "--output",
         str(tmp_path / "out")], pipeline_env(api_key=None))
    assert proc.returncode == ExitCode.USAGE
    assert str(cfg) in proc.stderr and "'workers'" in proc.stderr


async def test_progress_and_metrics_show_the_rate_limiter(tmp_path: Path, fake_server) -> None:
    """The limiter's state reaches the operator: the pace and where the limit came from (the
    server's x-ratelimit headers here), requests in flight against the Little's-law target and
    the latency, in the JSON progress events and in the Prometheus file."""
    server = await fake_server(latency=0.2, rps_limit=30, ratelimit_headers=True)
    make_docs(tmp_path / "in", 30, 1)
    metrics = tmp_path / "metrics.prom"
    proc = await run_pipeline_process(
        run_args(tmp_path / "in", tmp_path / "out", server.url, "--metrics-file", str(metrics))
        + ["--config", str(write_config(tmp_path, "progress_interval: 0.3"))],
        pipeline_env(),
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress, proc.stderr[-2000:]
    last = progress[-1]
    assert last["rate_limit_source"] == "headers"
    assert 0 < last["rate_rps"] <= 30
    assert last["latency_s"] is not None and last["latency_s"] >= 0.15
    assert last["target_in_flight"] >= 1 and last["rejections_429"] >= 0
    text = metrics.read_text()
    assert 'ocr_pipeline_rate_limit_source{source="headers"} 1.0' in text
    rate = float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("ocr_pipeline_rate_requests_per_second ")))
    assert 0 < rate <= 30
    assert "ocr_pipeline_request_latency_seconds" in text
