"""Crashes, signals and a full disk, on real subprocesses.

After a SIGKILL at any point a rerun finishes everything, no output is ever partial, and a chunk
whose answer was persisted is never sent again (only requests in flight at the kill may repeat).
SIGTERM/SIGINT stop cleanly with exit 130; a full disk fails the document, nothing else.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.errors import ExitCode
from tests.conftest import pipeline_env, run_args, run_pipeline
from tests.faultkit import (
    answers_over_one,
    assert_accounted,
    assert_complete,
    assert_no_partial_outputs,
    check_after_kill,
    chunk_count,
    make_docs,
    manifest_is_sound,
    manifest_rows,
    mount_tmpfs,
    output_files,
    persisted_chunks,
    resize_tmpfs,
    run_to_end,
    small_disk,
    spawn,
    unmount,
    write_config,
)

DOCS = {"a.pdf": 4, "b.pdf": 3, "c/d.pdf": 2, "e.pdf": 1}
PER_REQUEST = 2
SERIAL = ("--workers", "1", "--max-in-flight", "1")
CONCURRENT = ("--workers", "2", "--max-in-flight", "4")


def crash_args(inp: Path, out: Path, url: str, concurrency: tuple[str, ...]) -> list[str]:
    return run_args(inp, out, url, "--rps", "0", "--max-pages-per-request", str(PER_REQUEST),
                    *concurrency)


def in_flight_bound(concurrency: tuple[str, ...]) -> int:
    return int(concurrency[concurrency.index("--max-in-flight") + 1])


async def settled(server) -> None:
    """Wait until the server has finished with the requests of a killed client."""
    deadline = time.monotonic() + 5
    while server.stats.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


@dataclass
class Kill:
    """Where to kill: a pipeline crash point (`OCR_PIPELINE_CRASH_AT`) or a faultkit hook."""

    env: dict[str, str]
    concurrency: tuple[str, ...]
    hooks: bool = False
    checks: list[str] = field(default_factory=list)
    server: dict[str, object] = field(default_factory=dict)


KILLS = {
    # before the very first request: nothing sent, nothing paid
    "before-first-request": Kill({"OCR_PIPELINE_CRASH_AT": "request:1"}, SERIAL,
                                 checks=["nothing_sent"]),
    # with requests in flight
    "requests-in-flight": Kill({"OCR_PIPELINE_CRASH_AT": "request:5"}, CONCURRENT),
    # a chunk's answer persisted, its document not written yet
    "chunk-persisted": Kill({"OCR_PIPELINE_CRASH_AT": "chunk_persisted:3"}, SERIAL,
                            checks=["exact"]),
    "before-store": Kill({"OCR_PIPELINE_CRASH_AT": "before_store:2"}, SERIAL, checks=["exact"]),
    # between the markdown and the JSON of one document
    "mid-store": Kill({"OCR_PIPELINE_CRASH_AT": "mid_store:1"}, SERIAL,
                      checks=["exact", "markdown_without_json"]),
    # in the middle of writing an output file: half of its bytes on disk
    "torn-markdown": Kill({"FAULTKIT_KILL_IN_WRITE": ".md:1"}, SERIAL, hooks=True,
                          checks=["exact", "debris"]),
    "torn-json": Kill({"FAULTKIT_KILL_IN_WRITE": ".json:2"}, CONCURRENT, hooks=True,
                      checks=["debris"]),
    "torn-image": Kill({"FAULTKIT_KILL_IN_WRITE": ".jpeg:3"}, SERIAL, hooks=True,
                       checks=["exact", "debris"], server={"images_per_page": 1}),
    # outputs in place, manifest not told yet
    "after-store": Kill({"OCR_PIPELINE_CRASH_AT": "after_store:1"}, SERIAL,
                        checks=["exact", "written_not_done"]),
    # inside the manifest transaction that marks a document done, before its commit
    "done-commit": Kill({"FAULTKIT_KILL_AT_SQL": "UPDATE chunks SET state='merged':2"}, SERIAL,
                        hooks=True, checks=["exact", "written_not_done"]),
    # inside the transaction that persists a chunk's answer, before its commit
    "checkpoint-commit": Kill({"FAULTKIT_KILL_AT_SQL": "INSERT OR REPLACE INTO chunks:3"},
                              SERIAL, hooks=True, checks=["one_repeat"]),
    "document-done": Kill({"OCR_PIPELINE_CRASH_AT": "document_done:1"}, CONCURRENT),
}


@pytest.mark.parametrize("where", list(KILLS))
async def test_sigkill_at_a_crash_point_then_rerun_finishes_without_paying_twice(
    tmp_path: Path, fake_server, where: str
) -> None:
    kill = KILLS[where]
    server = await fake_server(latency=0.02, **kill.server)
    inp, out = tmp_path / "in", tmp_path / "out"
    make_docs(inp, DOCS)
    total = chunk_count(DOCS, PER_REQUEST)
    args = crash_args(inp, out, server.url, kill.concurrency)

    code, output, _ = await run_to_end(args, pipeline_env(**kill.env), tmp_path / "killed.log",
                                       hooks=kill.hooks)
    assert code == -signal.SIGKILL, f"the kill point was never reached (exit {code}):\n{output}"
    rows = check_after_kill(out, DOCS)
    await settled(server)
    paid = dict(server.stats.ok_by_document)
    persisted = persisted_chunks(out)
    assert persisted <= set(paid), "persisted an answer the server never gave"
    assert len(paid) < total, "the run finished before the kill: the test proves nothing"
    # Every answer the server gave was persisted, except those in flight at the kill.
    assert len(set(paid) - persisted) <= in_flight_bound(kill.concurrency)

    if "nothing_sent" in kill.checks:
        assert server.stats.requests == 0
    if "markdown_without_json" in kill.checks:
        halves = [p for p in output_files(out)
                  if p.suffix == ".md" and not p.with_suffix(".json").exists()]
        assert len(halves) == 1, halves
    if "written_not_done" in kill.checks:
        written = {p.relative_to(out).as_posix().removesuffix(".json")
                   for p in output_files(out) if p.suffix == ".json"}
        done = {rel for rel, row in rows.items() if row.state == "done"}
        assert len(written - done) == 1, (written, done)
    if "debris" in kill.checks:
        assert [p for p in output_files(out) if p.name.endswith(".tmp")], "no write was torn"

    rerun_code, rerun_output, _ = await run_to_end(args, pipeline_env(), tmp_path / "rerun.log")
    assert rerun_code == ExitCode.OK, rerun_output
    assert_accounted(out, DOCS)
    assert_no_partial_outputs(out, DOCS)
    assert len(server.stats.ok_by_document) == total
    for sha in persisted:
        assert server.stats.ok_by_document[sha] == paid[sha], "a persisted chunk was sent again"
    repeats = answers_over_one(server.stats)
    if "exact" in kill.checks or "nothing_sent" in kill.checks:
        # One request at a time and none in flight at the kill: not one page paid twice.
        assert repeats == 0 and server.stats.answered_ok == total
    elif "one_repeat" in kill.checks:
        # Killed before the answer's commit: that one answer is lost and bought again.
        assert repeats == 1 and len(persisted) == 2
    else:
        assert repeats <= in_flight_bound(kill.concurrency)


async def test_random_sigkills_of_a_real_run_lose_nothing_and_repeat_only_in_flight(
    tmp_path: Path, fake_server
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = await fake_server(latency=0.05, latency_max=0.1)
    inp, out = tmp_path / "in", tmp_path / "out"
    docs = make_docs(inp, {f"d{i}.pdf": 4 for i in range(8)})
    total = chunk_count(docs, 1)
    args = run_args(inp, out, server.url, "--rps", "0", "--max-pages-per-request", "1",
                    *CONCURRENT)
    kills = 0
    snapshots: list[tuple[set[str], dict[str, int]]] = []
    for round_ in range(6):
        child = await spawn(args, pipeline_env(), tmp_path / f"round{round_}.log")
        seen = server.stats.requests
        deadline = time.monotonic() + 20
        while server.stats.requests == seen and child.proc.returncode is None:
            assert time.monotonic() < deadline, child.output()
            await asyncio.sleep(0.005)
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        child.kill()
        code = await child.wait()
        if code == ExitCode.OK:
            break
        assert code == -signal.SIGKILL, f"seed {seed}: exit {code}\n{child.output()}"
        kills += 1
        check_after_kill(out, docs)
        await settled(server)
        persisted, paid = persisted_chunks(out), dict(server.stats.ok_by_document)
        before = snapshots[-1][1] if snapshots else {}
        new_answers = {sha for sha, n in paid.items() if n > before.get(sha, 0)}
        assert len(new_answers - persisted) <= in_flight_bound(CONCURRENT), (
            f"seed {seed}: answers received but not persisted beyond those in flight")
        snapshots.append((persisted, paid))
    assert kills >= 2, f"seed {seed}: the runs finished too fast to be killed"
    assert snapshots[-1][0], f"seed {seed}: nothing was persisted before a kill"

    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "final.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, docs)
    assert_no_partial_outputs(out, docs)
    assert len(server.stats.ok_by_document) == total
    for persisted, paid in snapshots:
        for sha in persisted:
            assert server.stats.ok_by_document[sha] == paid[sha], f"seed {seed}: paid again"
    assert answers_over_one(server.stats) <= kills * in_flight_bound(CONCURRENT), f"seed {seed}"


# ---- signals --------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_with_chunks_in_flight_stops_cleanly_130_and_resumes_without_repeats(
    tmp_path: Path, fake_server, sig: signal.Signals
) -> None:
    server = await fake_server(latency=0.25)
    inp, out = tmp_path / "in", tmp_path / "out"
    docs = make_docs(inp, {f"d{i}.pdf": 4 for i in range(3)})
    args = run_args(inp, out, server.url, "--rps", "0", "--max-pages-per-request", "1",
                    *CONCURRENT)
    child = await spawn(args, pipeline_env(), tmp_path / "run.log")
    # Some chunks answered (documents half done) and the next ones under way.
    while server.stats.answered_ok < 3 or server.stats.in_flight == 0:
        assert child.proc.returncode is None, child.output()
        await asyncio.sleep(0.005)
    child.proc.send_signal(sig)
    signalled = time.monotonic()
    code = await child.wait(30)
    assert code == ExitCode.INTERRUPTED, child.output()
    assert time.monotonic() - signalled < 3, "in-flight requests only need 0.25 s to land"

    rows = assert_accounted(out, docs, allow_pending=True)
    assert "pending" in {row.state for row in rows.values()}
    # A clean stop lets the requests in flight land and keeps every answer it paid for.
    assert persisted_chunks(out) == set(server.stats.ok_by_document)
    manifest_is_sound(out)

    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "rerun.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, docs)
    assert len(server.stats.ok_by_document) == chunk_count(docs, 1)
    assert answers_over_one(server.stats) == 0


async def test_second_signal_stops_at_once_and_the_run_resumes(tmp_path: Path,
                                                               fake_server) -> None:
    server = await fake_server(latency=5.0)
    inp, out = tmp_path / "in", tmp_path / "out"
    docs = make_docs(inp, {"a.pdf": 1, "b.pdf": 2})
    args = run_args(inp, out, server.url, "--rps", "100")  # a set rate: no slow-start probe
    child = await spawn(args, pipeline_env(), tmp_path / "run.log")
    while server.stats.in_flight < 2:
        assert child.proc.returncode is None, child.output()
        await asyncio.sleep(0.005)
    child.proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.3)
    assert child.proc.returncode is None, "the first signal waits for requests in flight"
    child.proc.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    code = await child.wait(30)
    assert code == ExitCode.INTERRUPTED, child.output()
    assert time.monotonic() - signalled < 2.5, "the second signal must not wait for answers"
    rows = assert_accounted(out, docs, allow_pending=True)
    assert {row.state for row in rows.values()} == {"pending"}
    assert output_files(out) == []

    server.options.latency = 0.0
    report = await run_pipeline(inp, out, server.url)
    assert report.exit_code == ExitCode.OK, report.failures
    assert_accounted(out, docs)


async def test_stop_waits_no_longer_than_shutdown_grace_for_a_hung_request(
    tmp_path: Path, fake_server
) -> None:
    server = await fake_server(fault_rate=1.0, faults=("hang",))
    inp, out = tmp_path / "in", tmp_path / "out"
    docs = make_docs(inp, {"a.pdf": 1, "b.pdf": 1})
    config = write_config(tmp_path / "c.yaml", shutdown_grace=0.5, request_timeout=60)
    # A set rate: no slow-start probe, whose hung answer would hold the second request back
    # for the whole request_timeout before both are in flight.
    args = run_args(inp, out, server.url, "--rps", "100", "--config", str(config))
    child = await spawn(args, pipeline_env(), tmp_path / "run.log")
    while server.stats.by_status.get("hang", 0) < 2:
        assert child.proc.returncode is None, child.output()
        await asyncio.sleep(0.005)
    child.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = await child.wait(30)
    assert code == ExitCode.INTERRUPTED, child.output()
    assert time.monotonic() - signalled < 3
    rows = assert_accounted(out, docs, allow_pending=True)
    assert {row.state for row in rows.values()} == {"pending"}

    server.options.fault_rate = 0.0
    report = await run_pipeline(inp, out, server.url)
    assert report.exit_code == ExitCode.OK, report.failures
    assert_accounted(out, docs)


# ---- disk full ------------------------------------------------------------------------------


async def test_disk_full_fails_the_document_as_storage_and_nothing_half_written_is_done(
    tmp_path: Path, fake_server
) -> None:
    server = await fake_server()
    inp, out = tmp_path / "in", tmp_path / "out"
    docs = make_docs(inp, {"ok.pdf": 2, "full/big.pdf": 60})
    # 12 KiB: the big document's markdown fits, its JSON does not; the manifest is elsewhere.
    with small_disk(out / "full", 12 * 1024) as how:
        report = await run_pipeline(inp, out, server.url, max_pages_per_request=20)
        assert report.exit_code == ExitCode.SOME_FAILED, (how, report.failures)
        assert [(f.path, f.category) for f in report.failures] == [("full/big.pdf", "storage")]
        assert "No space left on device" in report.failures[0].message, report.failures
        rows = assert_accounted(out, docs)
        assert rows["full/big.pdf"].category == "storage"
        assert rows["ok.pdf"].state == "done"
        assert [p.name for p in output_files(out / "full")] == [], (
            f"{how}: a failed document left part of its outputs")
        manifest_is_sound(out)
    sent = server.stats.requests
    assert sent == 1 + 3

    # Space is back: the failed document is redone from its kept answers, no request sent.
    again = await run_pipeline(inp, out, server.url, max_pages_per_request=20, retry_failed=True)
    assert again.exit_code == ExitCode.OK, again.failures
    assert_complete(out, "full/big.pdf", 60)
    assert server.stats.requests == sent, "answers already paid for were bought again"


@pytest.mark.parametrize("size_kib", [64, 192, 320])
async def test_disk_full_under_the_whole_output_and_manifest_ends_cleanly_and_resumes(
    tmp_path: Path, fake_server, size_kib: int
) -> None:
    """The manifest, the outputs and the run report share one small file system: wherever the
    space runs out (creating the manifest, checkpointing a chunk, writing a document, writing
    the report) the run ends with a documented exit code and a clear message, not a crash."""
    server = await fake_server()
    inp, out = tmp_path / "in", tmp_path / "out"
    docs = make_docs(inp, {**{f"d{i}.pdf": 2 for i in range(6)}, "big.pdf": 120})
    args = run_args(inp, out, server.url, "--rps", "0", "--max-pages-per-request", "10", *SERIAL)
    size = size_kib * 1024
    mounted = mount_tmpfs(out, size)
    try:
        code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "full.log",
                                           max_file_size=None if mounted else size // 4)
        assert code in (ExitCode.SOME_FAILED, ExitCode.FATAL), output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert re.search(r"No space left|disk is full|File too large|disk I/O error", output), (
            output[-3000:])
        assert_no_partial_outputs(out, docs)
        if (out / ".ocr-pipeline/manifest.sqlite3").exists():
            manifest_is_sound(out)
            for rel, row in manifest_rows(out).items():
                if row.state == "done":
                    assert_complete(out, rel, docs[rel])
                elif row.state == "failed":
                    assert row.category == "storage", (rel, row)

        # Space is back: the next run finishes everything.
        if mounted:
            resize_tmpfs(out, 64 * 1024 * 1024)
        code, output, _ = await run_to_end([*args, "--retry-failed"], pipeline_env(),
                                           tmp_path / "rerun.log")
        assert code == ExitCode.OK, output[-3000:]
        assert_accounted(out, docs)
        assert_no_partial_outputs(out, docs)
    finally:
        if mounted:
            unmount(out)
