"""Mistakes in the set-up stop the run fast with a message; odd answers and files fail alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web

import pipeline.run.document_job
import pipeline.run.runner
import pipeline.stages.plan
from pipeline.errors import ExitCode
from pipeline.logsetup import redact
from tests.conftest import (
    TEST_KEY,
    load_json,
    make_settings,
    pipeline_env,
    run_args,
    run_pipeline,
    run_pipeline_process,
    serve_app,
)
from tests.pdfgen import write_pdf


def fail_every_request(server, status: str) -> None:  # type: ignore[no-untyped-def]
    """From now on the (running) fake server answers every request with `status`."""
    server.options.fault_rate = 1.0
    server.options.faults = (status,)


def make_docs(root: Path, count: int) -> None:
    for i in range(count):
        write_pdf(root / f"d{i:02}.pdf", f"d{i:02}", 1)


async def test_wrong_endpoint_path_stops_after_a_few_404s(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 20)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", f"{server.url}/wrong/prefix")
    assert report.exit_code == ExitCode.FATAL
    assert "404" in report.message and "endpoint URL" in report.message
    assert report.documents_failed < 20, "a broken config must not fail every document"


async def test_an_option_the_deployment_rejects_stops_the_run(tmp_path: Path,
                                                              fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 20)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                extra_request={"no_such_option": True})
    assert report.exit_code == ExitCode.FATAL and "422" in report.message


async def test_a_422_for_one_document_after_successes_fails_only_it(tmp_path: Path,
                                                                    fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 6)
    first = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert first.exit_code == 0
    fail_every_request(server, "422")
    write_pdf(tmp_path / "in/new.pdf", "new", 1)
    second = await run_pipeline(tmp_path / "in", tmp_path / "out2", server.url, workers=1)
    assert second.exit_code == ExitCode.FATAL  # nothing has succeeded against this output yet
    third = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert third.exit_code == ExitCode.SOME_FAILED
    assert [(f.path, f.category) for f in third.failures] == [("new.pdf", "rejected")]


async def test_redirects_are_not_followed_and_stop_the_run(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    async def redirect(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/elsewhere/v1/ocr")

    app = web.Application()
    app.router.add_post("/v1/ocr", redirect)
    make_docs(tmp_path / "in", 3)
    async with serve_app(app) as url:
        report = await run_pipeline(tmp_path / "in", tmp_path / "out", url, auth_header="api-key")
    assert report.exit_code == ExitCode.FATAL
    assert "redirect" in report.message and "127.0.0.1:9/elsewhere" in report.message
    assert 1 <= len(seen) <= 8


async def test_nothing_but_429_for_longer_than_throttle_deadline_exits_3(tmp_path: Path,
                                                                         fake_server) -> None:
    server = await fake_server(fault_rate=1.0, faults=("429",), retry_after=0.2)
    make_docs(tmp_path / "in", 4)
    started = time.monotonic()
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                throttle_deadline=1.5)
    assert report.exit_code == ExitCode.FATAL and "429" in report.message
    assert time.monotonic() - started < 20
    assert report.documents_failed == 0, "rate limiting is never a document's fault"


async def test_413_fails_the_document_as_too_large_with_a_hint(tmp_path: Path,
                                                               fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 1)
    first = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert first.exit_code == 0
    fail_every_request(server, "413")
    write_pdf(tmp_path / "in/huge.pdf", "huge", 1)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert [(f.path, f.category) for f in report.failures] == [("huge.pdf", "too_large")]
    assert "max_bytes_per_request" in report.failures[0].message


async def test_a_nonsense_usage_info_does_not_poison_the_document(tmp_path: Path,
                                                                  fake_server,
                                                                  monkeypatch) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 2)
    from pipeline.backends.mistral import MistralBackend

    original = MistralBackend.ocr

    async def odd_usage(self: MistralBackend, chunk):  # type: ignore[no-untyped-def]
        response = await original(self, chunk)
        response["usage_info"] = "n/a" if chunk.doc_rel == "d00.pdf" else {"pages_processed": "x"}
        return response

    monkeypatch.setattr(MistralBackend, "ocr", odd_usage)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert report.exit_code == 0, report.failures
    assert load_json(tmp_path / "out/d00.pdf.json")["usage_info"]["pages_processed"] == 1


async def test_a_file_that_cannot_be_reread_while_planning_fails_alone(tmp_path: Path,
                                                                       fake_server,
                                                                       monkeypatch) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 3)
    assert (await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)).exit_code == 0
    (tmp_path / "in/d01.pdf").touch()  # mtime moves: the plan re-hashes it

    def broken_disk(path: Path, block: int = 1 << 20) -> str:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pipeline.stages.plan, "file_sha256", broken_disk)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert report.exit_code == ExitCode.SOME_FAILED
    assert [(f.path, f.category) for f in report.failures] == [("d01.pdf", "input")]
    assert "Input/output error" in report.failures[0].message


async def test_a_file_above_max_document_bytes_fails_as_too_large(tmp_path: Path,
                                                                  fake_server) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 2)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                max_document_bytes=100)
    assert {f.category for f in report.failures} == {"too_large"}
    assert "max_document_bytes" in report.failures[0].message
    assert server.stats.requests == 0


async def test_a_split_that_never_returns_times_out_alone(tmp_path: Path, fake_server,
                                                          monkeypatch) -> None:
    server = await fake_server()
    make_docs(tmp_path / "in", 4)
    real_iter_chunks = pipeline.run.document_job.iter_chunks

    def maybe_stuck(path, rel, *args, **kwargs):  # type: ignore[no-untyped-def]
        if rel == "d00.pdf":
            time.sleep(3)  # a pypdf loop on a hostile file, as far as the run can tell
        yield from real_iter_chunks(path, rel, *args, **kwargs)

    monkeypatch.setattr(pipeline.run.document_job, "iter_chunks", maybe_stuck)
    settings = make_settings(tmp_path / "in", tmp_path / "out", server.url, workers=1,
                             document_timeout=0.5)
    run = pipeline.run.runner.Run(settings)
    report = await run.execute()
    assert [(f.path, f.category) for f in report.failures] == [("d00.pdf", "timeout")]
    assert report.documents_done == 3, "the documents after it were not starved"
    assert run.has_stuck_threads(), "the abandoned split is known, so the CLI does not wait"
    await asyncio.sleep(3.2)
    assert not run.has_stuck_threads()


async def test_output_equal_to_input_is_a_usage_error(tmp_path: Path) -> None:
    make_docs(tmp_path / "in", 1)
    proc = await run_pipeline_process(
        run_args(tmp_path / "in", tmp_path / "in", "http://127.0.0.1:9"), pipeline_env())
    assert proc.returncode == ExitCode.USAGE and "output folder is the input" in proc.stderr


async def test_output_under_a_regular_file_is_a_usage_error(tmp_path: Path) -> None:
    make_docs(tmp_path / "in", 1)
    (tmp_path / "afile").write_text("x")
    proc = await run_pipeline_process(
        run_args(tmp_path / "in", tmp_path / "afile/out", "http://127.0.0.1:9"), pipeline_env())
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "cannot use" in proc.stderr and "Traceback" not in proc.stderr


async def test_a_key_with_a_trailing_newline_is_a_config_error(tmp_path: Path) -> None:
    make_docs(tmp_path / "in", 1)
    proc = await run_pipeline_process(
        run_args(tmp_path / "in", tmp_path / "out", "http://127.0.0.1:9"),
        pipeline_env(api_key=TEST_KEY + "\n"))
    assert proc.returncode == ExitCode.USAGE and "control character" in proc.stderr
    assert TEST_KEY not in proc.stderr


def test_loading_settings_registers_the_key_for_redaction(tmp_path: Path) -> None:
    make_settings(tmp_path, tmp_path / "out", "http://127.0.0.1:9",
                  api_key="sk-registered-0123456789", pdf_passwords=["pdf-pass-5555"])
    assert redact("key sk-registered-0123456789 pw pdf-pass-5555") == "key *** pw ***"
