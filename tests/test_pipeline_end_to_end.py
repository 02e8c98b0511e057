"""The pipeline's promises, checked from outside against a real fake server on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from pipeline.errors import ExitCode
from pipeline.run.lock import RunLock
from tests.conftest import (
    TEST_KEY,
    load_json,
    pipeline_env,
    run_args,
    run_pipeline,
    run_pipeline_process,
    start_pipeline_process,
)
from tests.pdfgen import page_text, png_bytes, write_pdf


def build_tree(root: Path) -> dict[str, int]:
    """A nested tree: multi-page PDFs, an image, a PDF larger than one chunk, x.pdf beside x.png."""
    docs = {
        "a/b/report.pdf": 3,
        "a/letter.pdf": 2,
        "big/long.pdf": 11,  # more than one chunk at 4 pages per request
        "x.pdf": 1,
    }
    for rel, pages in docs.items():
        write_pdf(root / rel, rel, pages)
    (root / "x.png").write_bytes(png_bytes())
    docs["x.png"] = 1
    return docs


def assert_document_complete(out: Path, rel: str, pages: int, *, pdf: bool = True) -> None:
    data = load_json(out / f"{rel}.json")
    assert [p["index"] for p in data["pages"]] == list(range(pages))
    assert data["source"]["path"] == rel
    assert data["source"]["pages"] == pages
    markdown = (out / f"{rel}.md").read_text()
    if pdf:
        positions = [markdown.index(page_text(rel, i)) for i in range(pages)]
        assert positions == sorted(positions), "page texts out of order in the markdown"
        for i, page in enumerate(data["pages"]):
            assert page_text(rel, i) in page["markdown"]
    for i in range(pages):
        assert f"<!-- page {i + 1} -->" in markdown


async def test_tree_is_mirrored_with_every_page_in_order(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    docs = build_tree(tmp_path / "in")
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url,
                                max_pages_per_request=4)
    assert report.exit_code == 0, report.failures
    assert report.documents_done == len(docs)
    for rel, pages in docs.items():
        assert_document_complete(tmp_path / "out", rel, pages, pdf=rel.endswith(".pdf"))
    # 11 pages at 4 per request: 3 chunks, each a standalone PDF the server could read.
    long_doc = load_json(tmp_path / "out/big/long.pdf.json")
    assert [(c["first_page"], c["pages"]) for c in long_doc["source"]["chunks"]] == [
        (0, 4), (4, 4), (8, 3)
    ]
    assert server.stats.requests == 3 + 4  # long.pdf's 3 chunks + 4 one-request documents


async def test_rerun_sends_nothing_and_a_changed_file_alone_is_redone(tmp_path: Path,
                                                                      fake_server) -> None:
    server = await fake_server()
    docs = build_tree(tmp_path / "in")
    first = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert first.exit_code == 0
    sent = server.stats.requests

    second = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert second.exit_code == 0
    assert server.stats.requests == sent, "an unchanged tree must cost zero requests"
    assert second.plan == {"unchanged": len(docs)}

    # `touch` alone (mtime moves, content does not) costs no request either.
    os.utime(tmp_path / "in/a/letter.pdf", ns=(time.time_ns(), time.time_ns() + 10**9))
    third = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert server.stats.requests == sent and third.plan == {"unchanged": len(docs)}

    write_pdf(tmp_path / "in/a/letter.pdf", "letter-v2", 2)
    fourth = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert fourth.plan == {"changed": 1, "unchanged": len(docs) - 1}
    assert server.stats.requests == sent + 1
    markdown = (tmp_path / "out/a/letter.pdf.md").read_text()
    assert page_text("letter-v2", 1) in markdown and page_text("a/letter.pdf", 0) not in markdown


async def test_bad_inputs_fail_alone_with_a_category_and_exit_1(tmp_path: Path,
                                                               fake_server) -> None:
    server = await fake_server()
    inp = tmp_path / "in"
    write_pdf(inp / "good.pdf", "good.pdf", 2)
    good = (inp / "good.pdf").read_bytes()
    (inp / "corrupt.pdf").write_bytes(good[:9] + b"\x00garbage" * 20)  # PDF header, no body
    (inp / "empty.pdf").write_bytes(b"")
    (inp / "notes.pdf").write_text("this is a text file with a .pdf name\n")
    (inp / "README.txt").write_text("not a document, not a failure\n")
    report = await run_pipeline(inp, tmp_path / "out", server.url)
    assert report.exit_code == ExitCode.SOME_FAILED
    assert report.documents_done == 1
    failed = {f.path: f for f in report.failures}
    assert set(failed) == {"corrupt.pdf", "empty.pdf", "notes.pdf"}
    assert all(f.category == "input" and f.message for f in failed.values())
    assert "damaged" in failed["corrupt.pdf"].message
    assert "empty" in failed["empty.pdf"].message
    assert "not a PDF" in failed["notes.pdf"].message
    assert [i.path for i in report.ignored] == ["README.txt"]
    assert_document_complete(tmp_path / "out", "good.pdf", 2)
    for rel in failed:
        assert not (tmp_path / "out" / f"{rel}.json").exists()
    with sqlite3.connect(tmp_path / "out/.ocr-pipeline/manifest.sqlite3") as db:
        rows = dict(db.execute("SELECT path, error_category FROM documents WHERE state='failed'"))
    assert rows == {"corrupt.pdf": "input", "empty.pdf": "input", "notes.pdf": "input"}


async def test_rate_limited_server_every_document_done_without_retry_storm(
    tmp_path: Path, fake_server
) -> None:
    server = await fake_server(rps_limit=4, latency=0.02, ratelimit_headers=False)
    inp = tmp_path / "in"
    for i in range(24):
        write_pdf(inp / f"d{i:02}.pdf", f"d{i:02}", 1)
    report = await run_pipeline(inp, tmp_path / "out", server.url, rps=30, max_in_flight=8)
    assert report.exit_code == 0, report.failures
    assert report.documents_done == 24
    throttled = server.stats.by_status.get("429", 0)
    assert throttled >= 1, "the server must have pushed back for this test to mean anything"
    assert report.requests["throttled"] == throttled
    # No storm: after the first pushback the limiter paces below the server's limit.
    assert throttled <= 10, f"{throttled} rejected requests for 24 documents"


async def test_bad_key_stops_the_run_within_seconds_with_exit_3(tmp_path: Path,
                                                                fake_server) -> None:
    server = await fake_server(api_key="the-right-key")
    inp = tmp_path / "in"
    for i in range(30):
        write_pdf(inp / f"d{i:02}.pdf", f"d{i:02}", 1)
    proc = await run_pipeline_process(
        run_args(inp, tmp_path / "out", server.url), pipeline_env(api_key="a-wrong-key")
    )
    assert proc.returncode == ExitCode.FATAL, proc.stderr
    assert proc.seconds < 10
    assert "API key" in proc.stdout and "401" in proc.stdout
    assert server.stats.requests <= 8, "a bad key must not be retried per document"
    assert not list((tmp_path / "out").rglob("*.json"))[1:], "no document may be written"


async def test_hostile_image_ids_never_escape_the_output_tree(tmp_path: Path, fake_server) -> None:
    server = await fake_server(images_per_page=2, image_id_style="hostile")
    inp = tmp_path / "work/in"
    out = tmp_path / "work/out"
    write_pdf(inp / "deep/doc.pdf", "doc", 2)
    before = set(Path("/tmp").glob("abs-*"))
    report = await run_pipeline(inp, out, server.url)
    assert report.exit_code == 0, report.failures
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(out)
               and not p.is_relative_to(inp)]
    assert outside == []
    assert set(Path("/tmp").glob("abs-*")) == before
    images = sorted(p.name for p in (out / "deep/doc.pdf.images").iterdir())
    assert images == ["img-0.jpeg", "img-1.jpeg", "img-2.jpeg", "img-3.jpeg"]
    data = load_json(out / "deep/doc.pdf.json")
    ids = [img["id"] for page in data["pages"] for img in page["images"]]
    assert ids == ["img-0.jpeg", "img-1.jpeg", "img-2.jpeg", "img-3.jpeg"]
    assert all(img["image_base64"] is None for page in data["pages"] for img in page["images"])
    markdown = (out / "deep/doc.pdf.md").read_text()
    assert "](doc.pdf.images/img-3.jpeg)" in markdown and "../" not in markdown


async def test_api_key_appears_in_no_log_output_report_or_manifest(tmp_path: Path,
                                                                   fake_server) -> None:
    server = await fake_server(api_key=TEST_KEY, fault_rate=0.3, seed=7)
    inp = tmp_path / "in"
    build_tree(inp)
    (inp / "bad.pdf").write_text("not a pdf")
    proc = await run_pipeline_process(run_args(inp, tmp_path / "out", server.url),
                                      pipeline_env(api_key=TEST_KEY))
    assert proc.returncode == ExitCode.SOME_FAILED, proc.stderr
    assert server.stats.answered_ok >= 5, "the key was accepted"
    assert TEST_KEY not in proc.stdout and TEST_KEY not in proc.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path


async def test_second_run_on_a_locked_output_exits_75(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    write_pdf(tmp_path / "in/a.pdf", "a", 1)
    with RunLock(tmp_path / "out/.ocr-pipeline"):
        proc = await run_pipeline_process(run_args(tmp_path / "in", tmp_path / "out", server.url),
                                          pipeline_env())
    assert proc.returncode == ExitCode.LOCKED
    assert "another run" in proc.stderr
    assert server.stats.requests == 0


def chunk_answers_over_one(stats) -> int:
    return sum(count - 1 for count in stats.ok_by_document.values() if count > 1)


async def test_sigkill_mid_run_then_rerun_completes_without_paying_twice(
    tmp_path: Path, fake_server
) -> None:
    server = await fake_server(latency=0.05)
    inp = tmp_path / "in"
    docs = {f"d{i:02}.pdf": 6 for i in range(12)}
    for rel, pages in docs.items():
        write_pdf(inp / rel, rel, pages)
    args = run_args(inp, tmp_path / "out", server.url, "--workers", "3", "--max-in-flight", "4",
                    "--max-pages-per-request", "2")
    proc = await start_pipeline_process(args, pipeline_env())
    # Kill once a third of the 36 chunks have been answered.
    deadline = time.monotonic() + 60
    while server.stats.answered_ok < 12 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    answered_before = server.stats.answered_ok
    assert answered_before < 36, "the run finished before the kill: the test proves nothing"

    rerun = await run_pipeline_process(args, pipeline_env())
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    for rel, pages in docs.items():
        assert_document_complete(tmp_path / "out", rel, pages)
    assert len(server.stats.ok_by_document) == 36
    # Only requests in flight at the kill (at most --max-in-flight) may have been answered twice.
    assert chunk_answers_over_one(server.stats) <= 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_cleanly_with_exit_130_and_the_run_resumes(
    tmp_path: Path, fake_server, sig: signal.Signals
) -> None:
    server = await fake_server(latency=0.2)
    inp = tmp_path / "in"
    for i in range(20):
        write_pdf(inp / f"d{i:02}.pdf", f"d{i:02}", 1)
    args = run_args(inp, tmp_path / "out", server.url, "--workers", "2")
    proc = await start_pipeline_process(args, pipeline_env())
    while server.stats.answered_ok < 2:
        await asyncio.sleep(0.01)
    proc.send_signal(sig)
    out, _err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == ExitCode.INTERRUPTED, out
    done_first = len(list((tmp_path / "out").glob("*.pdf.json")))
    assert 2 <= done_first < 20
    rerun = await run_pipeline_process(args, pipeline_env())
    assert rerun.returncode == 0
    assert len(list((tmp_path / "out").glob("*.pdf.json"))) == 20
    assert chunk_answers_over_one(server.stats) == 0, "a clean stop lets in-flight answers land"
