"""PDFs opened in another process (run/pdf_probes.py): a real spawned process, real PDFs, a real
kill of a stuck probe, and a run against the fake server whose outputs match a run without it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pipeline.run.pdf_probes as probes_module
import pipeline.run.split_pool as split_pool_module
import pipeline.stages.split as split_module
from pipeline.run.pdf_probes import PdfProbes
from pipeline.stages.sniff import PDF
from pipeline.stages.split import PdfFacts, iter_chunks, pdf_facts
from tests import hostile
from tests.conftest import load_json, pipeline_env, run_args, run_pipeline, start_pipeline_process
from tests.pdfgen import pdf_bytes
from tests.processes import alive, multiprocessing_workers, reaped


def facts_and_pid(data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
    """Runs in the probe process: its facts, with the process id in place of the notes."""
    facts = probes_module.facts_or_none(data, rel, passwords)
    if facts is not None:
        facts.repair_notes = [str(os.getpid())]
    return facts


def stuck(data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
    """A probe that never ends, as qpdf on a hostile file might."""
    time.sleep(600)
    return None


def stuck_on_hostile(data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
    """Stuck on one file only; any other gets its facts."""
    if rel == "hostile.pdf":
        time.sleep(600)
    return probes_module.facts_or_none(data, rel, passwords)


async def until_ready(probes: PdfProbes, deadline_s: float = 60) -> PdfProbes:
    end = time.monotonic() + deadline_s
    while not probes.ready():
        assert time.monotonic() < end, "the probe process did not start"
        await asyncio.sleep(0.02)
    return probes


async def started(probes: PdfProbes) -> PdfProbes:
    """Start the process now and wait until it says it is ready (no call in between)."""
    probes.start()
    return await until_ready(probes)


async def test_facts_come_from_another_process_once_enough_pdfs_came() -> None:
    data = pdf_bytes(["one", "two", "three"])
    probes = PdfProbes(start_after=2, cores=2, function=facts_and_pid)
    try:
        assert await probes.facts(data, "doc.pdf", None) is None  # the first PDF: no process yet
        assert probes._starter is None
        assert await probes.facts(data, "doc.pdf", None) is None  # the second: the process starts
        await until_ready(probes)
        facts = await probes.facts(data, "doc.pdf", None)
        assert facts is not None
        assert (facts.pages, facts.repaired, facts.encrypted) == (3, False, False)
        assert facts.repair_notes == [str(probes.pid)] != [str(os.getpid())]
        assert probes.answered == 1
    finally:
        probes.close()


async def test_a_damaged_pdf_gets_no_facts_and_the_process_goes_on() -> None:
    good = pdf_bytes(["one", "two"])
    probes = await started(PdfProbes(cores=2))
    try:
        assert await probes.facts(good, "doc.pdf", None) == pdf_facts(good, "doc.pdf")
        assert await probes.facts(hostile.truncated_pdf(["a", "b"]), "bad.pdf", None) is None
        repaired = await probes.facts(hostile.no_xref_pdf(["a", "b"]), "fixed.pdf", None)
        assert repaired is not None and repaired.repaired and repaired.repair_notes
        assert await probes.facts(good, "doc.pdf", None) == pdf_facts(good, "doc.pdf")
        assert probes.kills == 0
    finally:
        probes.close()


async def test_calls_on_the_way_together_each_get_their_own_answer(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty calls at once, of different PDFs, some damaged, with room for two or three on the
    way: the rest wait their turn, and each answer reaches the call that asked."""
    pdfs = [pdf_bytes([f"page {p}" for p in range(1 + i % 5)]) if i % 4 else
            hostile.truncated_pdf(["a", "b"]) for i in range(40)]
    monkeypatch.setattr(probes_module, "IN_FLIGHT_BYTES", 3 * min(len(d) for d in pdfs))
    probes = await started(PdfProbes(cores=2))
    try:
        calls = [asyncio.create_task(probes.facts(d, f"doc{i}.pdf", None))
                 for i, d in enumerate(pdfs)]
        await asyncio.sleep(0)
        child = probes._child
        assert child is not None and 1 <= len(child.sent) <= 3 and child.unsent
        assert child.bytes_on_the_way <= probes_module.IN_FLIGHT_BYTES
        answers = await asyncio.gather(*calls)
        assert [a.pages if a else None for a in answers] == [
            1 + i % 5 if i % 4 else None for i in range(len(pdfs))]
        assert probes.answered == 30 and probes.kills == 0
        assert not child.sent and not child.unsent and child.bytes_on_the_way == 0
    finally:
        probes.close()


CALLS_SEEN = 0


def numbered(data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
    """Runs in the probe process: facts whose notes say how many calls it has had."""
    global CALLS_SEEN
    CALLS_SEEN += 1
    time.sleep(0.05)
    facts = probes_module.facts_or_none(data, rel, passwords)
    if facts is not None:
        facts.repair_notes = [str(CALLS_SEEN)]
    return facts


async def test_a_call_cancelled_on_the_way_leaves_the_next_answers_in_order(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call out at a time: a call cancelled once sent still has its answer read (and
    dropped); one cancelled before it went out is never sent."""
    monkeypatch.setattr(probes_module, "IN_FLIGHT_BYTES", 1)
    three, five = pdf_bytes(["a", "b", "c"]), pdf_bytes(["a", "b", "c", "d", "e"])
    probes = await started(PdfProbes(cores=2, function=numbered))
    try:
        sent = asyncio.create_task(probes.facts(three, "three.pdf", None))
        queued = asyncio.create_task(probes.facts(three, "three.pdf", None))
        last = asyncio.create_task(probes.facts(five, "five.pdf", None))
        await asyncio.sleep(0)
        child = probes._child
        assert child is not None and len(child.sent) == 1 and len(child.unsent) == 2
        sent.cancel()
        queued.cancel()
        facts = await last
        assert facts is not None and (facts.pages, facts.repair_notes) == (5, ["2"])
        assert sent.cancelled() and queued.cancelled()
        again = await probes.facts(three, "three.pdf", None)
        assert again is not None and (again.pages, again.repair_notes) == (3, ["3"])
    finally:
        probes.close()


def slow(data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
    time.sleep(0.2)
    return probes_module.facts_or_none(data, rel, passwords)


async def test_a_process_busy_with_many_calls_is_not_taken_for_a_stuck_one() -> None:
    """wait_s bounds the time spent on one PDF, not a queue's: eight calls of 0.2 s each
    (1.6 s together) with wait_s = 0.5 are all answered, and nothing is killed."""
    data = pdf_bytes(["one"])
    probes = await started(PdfProbes(cores=2, wait_s=0.5, function=slow))
    try:
        answers = await asyncio.gather(*(probes.facts(data, "doc.pdf", None) for _ in range(8)))
        assert [a.pages if a else None for a in answers] == [1] * 8
        assert probes.kills == 0 and probes.ready()
    finally:
        probes.close()


async def test_a_pdf_over_max_bytes_is_not_copied_to_the_process() -> None:
    probes = await started(PdfProbes(cores=2))
    try:
        big = pdf_bytes(["one"]) + b"%" * probes_module.MAX_BYTES
        assert await probes.facts(big, "big.pdf", None) is None
        assert probes.answered == 0 and probes.ready()
    finally:
        probes.close()


async def test_a_stuck_probe_is_killed_and_the_pdf_is_left_to_the_caller() -> None:
    data = pdf_bytes(["one"])
    probes = await started(PdfProbes(start_after=1, cores=2, wait_s=0.5, function=stuck))
    try:
        pid = probes.pid
        assert pid is not None
        began = time.monotonic()
        assert await probes.facts(data, "doc.pdf", None) is None  # stuck: given up after wait_s
        assert time.monotonic() - began < 5
        assert reaped(pid)  # killed and reaped
        assert probes.kills == 1 and probes.pid is None
        assert await probes.facts(data, "doc.pdf", None) is None  # counts towards a new start
        await until_ready(probes)
        assert probes.pid not in (None, pid)
    finally:
        probes.close()


async def test_calls_behind_a_stuck_one_are_left_to_their_callers_with_one_kill() -> None:
    good = pdf_bytes(["one", "two"])
    probes = await started(PdfProbes(cores=2, wait_s=0.5, function=stuck_on_hostile))
    try:
        began = time.monotonic()
        answers = await asyncio.gather(probes.facts(good, "hostile.pdf", None),
                                       *(probes.facts(good, f"doc{i}.pdf", None) for i in range(3)))
        assert answers == [None] * 4
        assert time.monotonic() - began < 5
        assert probes.kills == 1 and probes.pid is None and probes.answered == 0
    finally:
        probes.close()


async def test_calls_not_yet_sent_when_the_process_is_killed_get_none(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probes_module, "IN_FLIGHT_BYTES", 1)  # one call out at a time
    good = pdf_bytes(["one", "two"])
    probes = await started(PdfProbes(cores=2, wait_s=0.5, function=stuck_on_hostile))
    try:
        calls = [asyncio.create_task(probes.facts(good, "hostile.pdf", None)),
                 *(asyncio.create_task(probes.facts(good, f"doc{i}.pdf", None)) for i in range(3))]
        await asyncio.sleep(0)
        child = probes._child
        assert child is not None and len(child.sent) == 1 and len(child.unsent) == 3
        assert await asyncio.wait_for(asyncio.gather(*calls), 10) == [None] * 4
        assert probes.kills == 1 and not child.sent and not child.unsent
    finally:
        probes.close()


async def test_closed_with_calls_sent_and_queued_every_caller_gets_none(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probes_module, "IN_FLIGHT_BYTES", 1)
    probes = await started(PdfProbes(cores=2, function=stuck))
    pid = probes.pid
    calls = [asyncio.create_task(probes.facts(pdf_bytes(["one"]), "doc.pdf", None))
             for _ in range(3)]
    await asyncio.sleep(0)
    talker = probes._child.talker if probes._child else None
    probes.close()
    assert await asyncio.wait_for(asyncio.gather(*calls), 10) == [None] * 3
    await asyncio.sleep(0)
    assert talker is not None and talker.done()
    assert pid is not None and reaped(pid) and probes.kills == 0


async def test_an_answer_that_waited_out_a_stalled_loop_is_not_a_stuck_process() -> None:
    """The loop itself stalls past wait_s (a split thread holding the GIL) while the answer
    sits in the socket: the watchdog looks again after the talker's turn and kills nothing."""
    data = pdf_bytes(["one", "two"])
    probes = await started(PdfProbes(cores=2, wait_s=0.3))
    try:
        call = asyncio.create_task(probes.facts(data, "doc.pdf", None))
        await asyncio.sleep(0)  # sent
        time.sleep(0.8)  # the loop stalls; the process answers meanwhile
        facts = await call
        assert facts is not None and facts.pages == 2
        assert probes.kills == 0 and probes.ready()
    finally:
        probes.close()


async def test_a_process_that_dies_answers_its_calls_with_none() -> None:
    data = pdf_bytes(["one"])
    probes = await started(PdfProbes(cores=2, function=stuck))
    try:
        pid = probes.pid
        assert pid is not None
        calls = [asyncio.create_task(probes.facts(data, "doc.pdf", None)) for _ in range(3)]
        await asyncio.sleep(0.1)
        os.kill(pid, 9)  # the OOM killer, say
        assert await asyncio.wait_for(asyncio.gather(*calls), 10) == [None] * 3
        assert probes.kills == 0 and probes.pid is None and probes.enabled
    finally:
        probes.close()


async def test_after_max_kills_the_run_stops_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes_module, "MAX_KILLS", 1)
    probes = PdfProbes(start_after=1, cores=2)
    probes.kills = 1
    try:
        for _ in range(3):
            assert await probes.facts(pdf_bytes(["one"]), "doc.pdf", None) is None
        assert probes._starter is None and probes.pid is None
    finally:
        probes.close()


async def test_a_process_that_cannot_start_turns_probing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_more_processes(function: Any) -> Any:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(probes_module, "_Child", no_more_processes)
    probes = PdfProbes(start_after=1, cores=2)
    try:
        assert await probes.facts(pdf_bytes(["one"]), "doc.pdf", None) is None
        end = time.monotonic() + 10
        while probes.enabled:
            assert time.monotonic() < end
            await asyncio.sleep(0.01)
        assert await probes.facts(pdf_bytes(["one"]), "doc.pdf", None) is None
        assert probes._starter is None and probes.pid is None
        assert probes.summary() == {
            "answered": 0, "kills": 0,
            "off": "could not start (BlockingIOError: [Errno 11] Resource temporarily unavailable)"}
    finally:
        probes.close()


async def test_the_last_kill_says_why_probing_went_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes_module, "MAX_KILLS", 1)
    probes = await started(PdfProbes(start_after=1, cores=2, wait_s=0.5, function=stuck))
    try:
        assert probes.summary()["off"] is None
        assert await probes.facts(pdf_bytes(["one"]), "doc.pdf", None) is None
        assert probes.summary() == {"answered": 0, "kills": 1,
                                    "off": "killed 1 times, each after 0.5 s without an answer"}
        assert await probes.facts(pdf_bytes(["one"]), "doc.pdf", None) is None  # no new process
        assert probes._starter is None and probes.pid is None
    finally:
        probes.close()


async def test_the_process_outlives_the_thread_that_asked_for_it() -> None:
    """PR_SET_PDEATHSIG kills a child when the thread that started it ends: the process is
    started from a thread that lives as long as it, whichever thread or task asked."""
    data = pdf_bytes(["one"])
    probes = PdfProbes(cores=2)
    try:
        await asyncio.create_task(started(probes))  # the asking task has ended
        pid = probes.pid
        starters = [t for t in threading.enumerate() if t.name == "ocr-pdf-probe"]
        await asyncio.sleep(0.5)
        assert pid is not None and not reaped(pid) and starters
        assert await probes.facts(data, "doc.pdf", None) == pdf_facts(data, "doc.pdf")
    finally:
        probes.close()
    end = time.monotonic() + 5
    while any(t.is_alive() for t in starters):  # closing lets the starter thread end
        assert time.monotonic() < end
        await asyncio.sleep(0.02)


def test_closed_after_its_loop_has_ended_the_process_is_still_killed() -> None:
    probes = PdfProbes(cores=2)
    asyncio.run(started(probes))
    pid = probes.pid
    assert pid is not None and not reaped(pid)
    probes.close()  # no running loop: nothing left to cancel on it, but the process must go
    assert reaped(pid) and probes.pid is None


async def test_one_core_never_starts_a_process() -> None:
    probes = PdfProbes(start_after=1, cores=1)
    for _ in range(5):
        assert await probes.facts(pdf_bytes(["one"]), "doc.pdf", None) is None
    assert probes.pid is None
    assert probes.summary() == {"answered": 0, "kills": 0, "off": "one core"}


def test_a_pdf_the_probe_found_sendable_is_never_opened_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = pdf_bytes(["one", "two"])
    told: list[PdfFacts] = []

    def no_open(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("opened in this process")

    monkeypatch.setattr(split_module, "open_pdf", no_open)
    chunks = list(iter_chunks(tmp_path / "doc.pdf", "doc.pdf", PDF, max_pages=8, max_bytes=10**6,
                              data=data, on_open=told.append,
                              known=PdfFacts(2, False, False)))
    assert [(c.first_page, c.page_count, c.data) for c in chunks] == [(0, 2, data)]
    assert [f.pages for f in told] == [2]


@pytest.mark.parametrize("facts", [
    None,  # no facts (the probe could not tell)
    PdfFacts(2, False, True),  # encrypted: decrypted here before it is sent
    PdfFacts(2, True, False, ["xref rebuilt"]),  # repaired: rewritten here
    PdfFacts(9, False, False),  # more pages than a request takes: cut here
], ids=["unknown", "encrypted", "repaired", "to-cut"])
def test_anything_but_a_sendable_pdf_is_opened_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts: PdfFacts | None
) -> None:
    data = pdf_bytes(["one", "two"])
    opened: list[str] = []
    real_open = split_module.open_pdf

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        opened.append("here")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(split_module, "open_pdf", counting_open)
    max_pages = 1 if facts is not None and facts.pages > 2 else 8
    chunks = list(iter_chunks(tmp_path / "doc.pdf", "doc.pdf", PDF, max_pages=max_pages,
                              max_bytes=10**6, data=data, known=facts))
    assert opened == ["here"]
    assert sum(c.page_count for c in chunks) == 2


async def test_a_run_with_probes_writes_what_a_run_without_them_writes(
    tmp_path: Path, fake_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty PDFs, one repaired, one damaged: the same outputs and failures either way, and
    with the process waited for (not left to start after 32 PDFs), the sendable PDFs are not
    opened by the run."""
    source = tmp_path / "in"
    source.mkdir()
    for i in range(40):
        (source / f"doc{i:02d}.pdf").write_bytes(pdf_bytes([f"document {i} page {p}" for p in (1, 2)]))
    (source / "repaired.pdf").write_bytes(hostile.no_xref_pdf(["needs", "repair"]))
    (source / "damaged.pdf").write_bytes(hostile.truncated_pdf(["gone", "for good"]))
    server = await fake_server()

    made: list[PdfProbes] = []
    pids: list[int | None] = []
    opened_here: list[str] = []
    real_open = split_module.open_pdf

    def counting_open(data: bytes, rel: str, passwords: list[str] | None = None) -> Any:
        opened_here.append(rel)
        return real_open(data, rel, passwords)

    class StartedProbes(PdfProbes):
        def __init__(self) -> None:
            super().__init__(cores=2, wait_s=60)  # generous: a loaded machine must not fall back
            made.append(self)

        async def facts(self, data: bytes, rel: str,
                        passwords: list[str] | None) -> PdfFacts | None:
            if not self.ready():  # the first PDFs wait for the process: no fallback here
                await started(self)
                pids.append(self.pid)
            return await super().facts(data, rel, passwords)

    monkeypatch.setattr(split_module, "open_pdf", counting_open)  # this process's opens only
    monkeypatch.setattr(split_pool_module, "PdfProbes", StartedProbes)
    with_probes = await run_pipeline(source, tmp_path / "with", server.url)
    assert sorted(opened_here) == ["damaged.pdf", "repaired.pdf"]  # the forty were not
    monkeypatch.setattr(split_pool_module, "PdfProbes", lambda: PdfProbes(cores=1))
    without = await run_pipeline(source, tmp_path / "without", server.url)

    assert made and made[0].answered == 41  # the forty and the repaired one; not the damaged one
    assert made[0]._closed and made[0].pid is None and pids[0] is not None
    assert reaped(pids[0])  # the run killed its process at the end
    for report in (with_probes, without):
        assert (report.documents_done, report.documents_failed) == (41, 1)
        assert not [w for w in report.warnings if "probe" in w]
    assert with_probes.pdf_probes == {"answered": 41, "kills": 0, "off": None}
    assert without.pdf_probes == {"answered": 0, "kills": 0, "off": "one core"}
    for name in ("doc07.pdf", "repaired.pdf"):
        a = load_json(tmp_path / "with" / f"{name}.json")
        b = load_json(tmp_path / "without" / f"{name}.json")
        assert a["pages"] == b["pages"]
        for key in ("pages", "chunks", "repaired", "repair_notes"):
            assert a["source"][key] == b["source"][key], key
    assert load_json(tmp_path / "with" / "repaired.pdf.json")["source"].get("repaired") is True


async def test_a_run_whose_probe_process_cannot_start_says_so_and_goes_on(
    tmp_path: Path, fake_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for i in range(6):
        (source / f"doc{i}.pdf").write_bytes(pdf_bytes([f"document {i}"]))
    server = await fake_server()

    def no_more_processes(function: Any) -> Any:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(probes_module, "_Child", no_more_processes)
    monkeypatch.setattr(split_pool_module, "PdfProbes",
                        lambda: PdfProbes(start_after=1, cores=2))
    report = await run_pipeline(source, tmp_path / "out", server.url)
    assert (report.documents_done, report.documents_failed) == (6, 0)
    assert report.pdf_probes is not None and report.pdf_probes["off"].startswith("could not start")
    warned = [w for w in report.warnings if "PDF probe process went off" in w]
    assert warned == ["the PDF probe process went off (could not start (BlockingIOError: [Errno 11]"
                      " Resource temporarily unavailable)); PDFs were opened in the run's own"
                      " process from then on"]
    saved = load_json(next((tmp_path / "out").glob("**/runs/*.json")))
    assert saved["pdf_probes"] == report.pdf_probes


async def test_a_run_killed_with_sigkill_leaves_no_probe_process(
    tmp_path: Path, fake_server: Any
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for i in range(200):
        (source / f"doc{i:03d}.pdf").write_bytes(pdf_bytes([f"document {i}"]))
    server = await fake_server(latency=1.0)
    proc = await start_pipeline_process(run_args(source, tmp_path / "out", server.url),
                                        pipeline_env())
    try:
        end = time.monotonic() + 60
        while not (children := multiprocessing_workers(proc.pid)):
            assert proc.returncode is None and time.monotonic() < end, "no probe process started"
            await asyncio.sleep(0.05)
    finally:
        proc.kill()
        await proc.communicate()
    end = time.monotonic() + 10
    while any(alive(pid) for pid in children):
        assert time.monotonic() < end, f"probe process {children} outlived its run"
        await asyncio.sleep(0.05)
