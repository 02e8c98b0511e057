"""Batch mode's waiting, stopping and failures, on a real `python -m pipeline` and the fake
server's Batch API: --no-wait then a later run, SIGINT while waiting, failed lines, jobs that end
FAILED / TIMEOUT_EXCEEDED / CANCELLED, results gone, budgets, the dry run, the Azure refusal."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from pathlib import Path

from pipeline.errors import ExitCode
from pipeline.fakeserver.batch import batch_of
from tests.conftest import pipeline_env, run_args, run_pipeline_process
from tests.faultkit import (
    answers_over_one,
    assert_accounted,
    chunk_count,
    make_docs,
    manifest_rows,
    run_to_end,
    spawn,
)
from tests.test_batch_mode import DOCS, batch_args, run_report, write_batch_config


def setup(tmp_path: Path, url: str, **batch: object) -> tuple[Path, list[str]]:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_docs(inp, DOCS)
    config = write_batch_config(tmp_path / "c.yaml", max_requests_per_job=3, **batch)
    return out, batch_args(inp, out, url, "--config", str(config))


def assert_each_chunk_answered_once(server, fake) -> None:
    assert len(fake.by_custom_id) == chunk_count(DOCS, 2)
    assert all(n == 1 for n in fake.by_custom_id.values()), fake.by_custom_id
    assert answers_over_one(server.stats) == 0


async def status_json(out: Path) -> dict:
    proc = await run_pipeline_process(["status", "--output", str(out), "--json"], pipeline_env())
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


async def test_no_wait_exits_0_status_lists_the_jobs_and_a_later_run_collects(
        tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    fake = batch_of(server)
    fake.behaviour.hold = True
    out, args = setup(tmp_path, server.url)
    code, output, _ = await run_to_end([*args, "--no-wait"], pipeline_env(), tmp_path / "1.log")
    assert code == ExitCode.OK, output
    assert {r.state for r in manifest_rows(out).values()} == {"pending"}
    status = await status_json(out)
    jobs = status["batch_jobs"]
    assert len(jobs) == 2 and {j["job_id"] for j in jobs} == set(fake.jobs)
    assert sum(j["requests"] for j in jobs) == chunk_count(DOCS, 2)
    assert all(j["completed"] == 0 for j in jobs)

    fake.behaviour.hold = False
    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "2.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, DOCS)
    assert_each_chunk_answered_once(server, fake)
    assert fake.jobs_created == 2
    assert (await status_json(out))["batch_jobs"] == []


async def test_sigint_while_waiting_exits_130_jobs_go_on_and_the_next_run_collects(
        tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    fake = batch_of(server)
    fake.behaviour.hold = True
    out, args = setup(tmp_path, server.url)
    child = await spawn(args, pipeline_env(), tmp_path / "1.log")
    while fake.jobs_created < 2:
        assert child.proc.returncode is None, child.output()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # waiting now
    child.proc.send_signal(signal.SIGINT)
    assert await child.wait(10) == ExitCode.INTERRUPTED, child.output()
    assert all(j.status == "QUEUED" for j in fake.jobs.values()), "the jobs were cancelled"

    fake.behaviour.hold = False
    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "2.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, DOCS)
    assert_each_chunk_answered_once(server, fake)
    assert fake.jobs_created == 2


async def test_failed_lines_fail_their_document_as_a_sync_error_would_and_retry_sends_only_them(
        tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    fake = batch_of(server)
    out, args = setup(tmp_path, server.url)
    sha_b = hashlib.sha256((tmp_path / "in" / "b.pdf").read_bytes()).hexdigest()
    fake.behaviour.fail_custom_ids = [sha_b]
    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "1.log")
    assert code == ExitCode.SOME_FAILED, output
    rows = assert_accounted(out, DOCS)
    assert rows["b.pdf"].state == "failed" and rows["b.pdf"].category == "rejected"
    assert "HTTP 422" in rows["b.pdf"].message and "batch job" in rows["b.pdf"].message
    assert {r.state for p, r in rows.items() if p != "b.pdf"} == {"done"}

    fake.behaviour.fail_custom_ids = []
    answered = dict(fake.by_custom_id)
    code, output, _ = await run_to_end([*args, "--retry-failed"], pipeline_env(), tmp_path / "2.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, DOCS)
    resent = {k for k, n in fake.by_custom_id.items() if n != answered.get(k, 0)}
    assert len(resent) == 1 and sha_b in next(iter(resent))
    assert_each_chunk_answered_once(server, fake)


async def test_server_batch_5xx_line_fails_as_backend(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    fake = batch_of(server)
    fake.behaviour.fail_custom_ids, fake.behaviour.fail_status = [".0.2"], 503
    out, args = setup(tmp_path, server.url)
    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "1.log")
    assert code == ExitCode.SOME_FAILED, output
    rows = manifest_rows(out)
    failed = {p: r.category for p, r in rows.items() if r.state == "failed"}
    assert failed == {"a.pdf": "backend", "c/d.pdf": "backend"}, failed


async def test_jobs_that_end_failed_timeout_or_cancelled_put_chunks_back_and_are_sent_again(
        tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    fake = batch_of(server)
    out, args = setup(tmp_path, server.url)
    no_wait = [*args, "--no-wait"]
    # 1. every job FAILED
    fake.behaviour.outcome = "failed"
    assert (await run_to_end(no_wait, pipeline_env(), tmp_path / "1.log"))[0] == ExitCode.OK
    while any(j.status != "FAILED" for j in fake.jobs.values()):
        await asyncio.sleep(0.01)
    # 2. collected as FAILED, sent again; this time half the lines run, then TIMEOUT_EXCEEDED
    fake.behaviour.outcome = "timeout"
    assert (await run_to_end(no_wait, pipeline_env(), tmp_path / "2.log"))[0] == ExitCode.OK
    report = run_report(out)["batch"]
    assert report["jobs_ended"] == {"FAILED": 2}
    assert report["chunks_returned_to_pending"] == chunk_count(DOCS, 2)
    assert report["requests_queued"] == chunk_count(DOCS, 2)
    while any(j.status not in ("FAILED", "TIMEOUT_EXCEEDED") for j in fake.jobs.values()):
        await asyncio.sleep(0.01)
    # 3. the timed-out jobs' answers kept, the rest sent again, and cancelled while queued
    fake.behaviour.outcome, fake.behaviour.hold = "success", True
    assert (await run_to_end(no_wait, pipeline_env(), tmp_path / "3.log"))[0] == ExitCode.OK
    report = run_report(out)["batch"]
    assert report["jobs_ended"] == {"TIMEOUT_EXCEEDED": 2}
    assert 0 < report["answers_collected"] < chunk_count(DOCS, 2)
    queued = [j for j in fake.jobs.values() if j.status == "QUEUED"]
    assert queued
    async with __import__("aiohttp").ClientSession() as http:
        for job in queued:
            async with http.post(f"{server.url}/v1/batch/jobs/{job.id}/cancel") as resp:
                assert resp.status == 200
    fake.behaviour.hold = False
    # 4. cancelled jobs collected, their chunks sent a last time, and the run waits for them
    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "4.log")
    assert code == ExitCode.OK, output
    assert run_report(out)["batch"]["jobs_ended"] == {"CANCELLED": len(queued)}
    assert_accounted(out, DOCS)
    assert_each_chunk_answered_once(server, fake)


async def test_results_no_longer_downloadable_are_sent_again(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    fake = batch_of(server)
    fake.behaviour.results_gone = True
    out, args = setup(tmp_path, server.url)
    assert (await run_to_end([*args, "--no-wait"], pipeline_env(), tmp_path / "1.log"))[0] == 0
    while any(j.status != "SUCCESS" for j in fake.jobs.values()):
        await asyncio.sleep(0.01)
    fake.behaviour.results_gone = False
    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "2.log")
    assert code == ExitCode.OK, output
    assert "results no longer downloadable" in output
    assert_accounted(out, DOCS)
    assert all(n == 2 for n in fake.by_custom_id.values())  # paid again: reported, not hidden


async def test_max_pages_is_checked_before_submission_at_the_batch_price(
        tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    fake = batch_of(server)
    out, args = setup(tmp_path, server.url)
    # $4 per 1,000 pages, $2 in batch: $0.006 buys 3 pages (1.5 synchronously)
    code, output, _ = await run_to_end([*args, "--max-cost", "0.006", "--workers", "1"],
                                       pipeline_env(), tmp_path / "1.log")
    assert code == ExitCode.FATAL, output  # the budget stop
    sent = sum(int(k.rsplit(".", 1)[1]) for k in fake.by_custom_id)
    assert 0 < sent <= 3, fake.by_custom_id
    assert run_report(out)["outcome"] == "budget"


async def test_dry_run_estimates_at_the_batch_price(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_docs(inp, DOCS)
    common = run_args(inp, out, "http://127.0.0.1:9", "--dry-run", "--max-pages-per-request", "2")
    sync = await run_pipeline_process(common, pipeline_env())
    batch = await run_pipeline_process([*common, "--mode", "batch"], pipeline_env())
    assert sync.returncode == batch.returncode == 0, sync.stderr + batch.stderr
    pages = sum(DOCS.values())
    assert f"${pages * 4 / 1000:.2f}" in sync.stdout
    assert f"${pages * 2 / 1000:.2f}" in batch.stdout, batch.stdout
    assert not out.exists()


async def test_batch_mode_with_azure_is_a_config_error_that_says_why(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    make_docs(inp, {"a.pdf": 1})
    args = ["run", "--backend", "azure", "--endpoint", "https://x.example/providers/mistral/azure/ocr",
            "--input", str(inp), "--output", str(tmp_path / "out"), "--mode", "batch"]
    proc = await run_pipeline_process(args, pipeline_env(api_key=None, AZURE_API_KEY="k-1"))
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "batch" in proc.stderr and "azure" in proc.stderr.lower()
    assert not (tmp_path / "out").exists()


async def test_a_twin_planned_after_its_content_was_collected_takes_that_answer(
        tmp_path: Path, fake_server) -> None:
    """Batch mode's content dedup at the document job: `a.pdf`'s job is collected at the start
    of the second run, then a twin added since is planned: it takes a.pdf's checkpointed answer
    (no request line, no second payment) and the report counts its pages as deduplicated."""
    server = await fake_server()
    fake = batch_of(server)
    fake.behaviour.hold = True
    out, args = setup(tmp_path, server.url)
    assert (await run_to_end([*args, "--no-wait"], pipeline_env(), tmp_path / "1.log"))[0] == 0
    fake.behaviour.hold = False
    inp = tmp_path / "in"
    (inp / "twin-of-a.pdf").write_bytes((inp / "a.pdf").read_bytes())

    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "2.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, DOCS)
    assert manifest_rows(out)["twin-of-a.pdf"].state == "done"
    assert_each_chunk_answered_once(server, fake)  # the twin sent no line of its own
    assert fake.jobs_created == 2
    twin = json.loads((out / "twin-of-a.pdf.json").read_text())
    assert twin["pages"] == json.loads((out / "a.pdf.json").read_text())["pages"]
    assert twin["source"]["same_content_as"] == "a.pdf"
    report = run_report(out)
    assert report["batch"]["pages_deduplicated"] == DOCS["a.pdf"]
    assert report["batch"]["requests_queued"] == 0
