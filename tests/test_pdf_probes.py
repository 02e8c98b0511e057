"""PDFs opened in another process (run/pdf_probes.py): a real spawned process, real PDFs, a real
kill of a stuck probe, and a run against the fake server whose outputs match a run without it."""

from __future__ import annotations

import os
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
from tests.conftest import load_json, run_pipeline
from tests.pdfgen import pdf_bytes


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


def warm(probes: PdfProbes, data: bytes, deadline_s: float = 60) -> PdfFacts | None:
    """Call until the process has started and answers (the first calls start it)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if probes.ready():
            return probes(data, "doc.pdf", None)
        assert probes(data, "doc.pdf", None) is None  # not ready yet: the caller opens it
        time.sleep(0.02)
    raise AssertionError("the probe process did not start")


def test_facts_come_from_another_process_once_it_has_started() -> None:
    data = pdf_bytes(["one", "two", "three"])
    probes = PdfProbes(start_after=2, cores=2, function=facts_and_pid)
    try:
        assert probes(data, "doc.pdf", None) is None  # the first PDF of a run: no process yet
        assert probes.pid is None
        facts = warm(probes, data)
        assert facts is not None
        assert (facts.pages, facts.repaired, facts.encrypted) == (3, False, False)
        assert facts.repair_notes != [str(os.getpid())]
        assert probes.answered == 1
    finally:
        probes.close()


def test_a_damaged_pdf_gets_no_facts_and_the_process_goes_on() -> None:
    good = pdf_bytes(["one", "two"])
    probes = PdfProbes(start_after=1, cores=2)
    try:
        assert warm(probes, good) == pdf_facts(good, "doc.pdf")
        assert probes(hostile.truncated_pdf(["a", "b"]), "bad.pdf", None) is None
        repaired = probes(hostile.no_xref_pdf(["a", "b"]), "fixed.pdf", None)
        assert repaired is not None and repaired.repaired and repaired.repair_notes
        assert probes(good, "doc.pdf", None) == pdf_facts(good, "doc.pdf")
        assert probes.kills == 0
    finally:
        probes.close()


def test_a_stuck_probe_is_killed_and_the_pdf_is_left_to_the_caller() -> None:
    data = pdf_bytes(["one"])
    probes = PdfProbes(start_after=1, cores=2, wait_s=0.5, function=stuck)
    try:
        assert warm(probes, data) is None  # the first call once ready: stuck, given up
        assert probes.kills == 1 and probes.pid is None
        end = time.monotonic() + 60
        while not probes.ready():  # started again after start_after more PDFs
            assert probes(data, "doc.pdf", None) is None
            assert time.monotonic() < end, "the probe process did not start again"
            time.sleep(0.02)
        pid = probes.pid
        assert pid is not None
        process = probes._child.process if probes._child else None
        started = time.monotonic()
        assert probes(data, "doc.pdf", None) is None
        assert time.monotonic() - started < 5
        assert process is not None and not process.is_alive()  # killed and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert probes.kills == 2 and probes.pid is None
    finally:
        probes.close()


def test_after_max_kills_the_run_stops_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes_module, "MAX_KILLS", 1)
    probes = PdfProbes(start_after=1, cores=2)
    probes.kills = 1
    assert probes(pdf_bytes(["one"]), "doc.pdf", None) is None
    assert probes.pid is None


def test_one_core_never_starts_a_process() -> None:
    probes = PdfProbes(start_after=1, cores=1)
    for _ in range(5):
        assert probes(pdf_bytes(["one"]), "doc.pdf", None) is None
    assert probes.pid is None


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
                              probe=lambda d, rel, pw: PdfFacts(2, False, False)))
    assert [(c.first_page, c.page_count, c.data) for c in chunks] == [(0, 2, data)]
    assert [f.pages for f in told] == [2]


@pytest.mark.parametrize("facts", [
    None,  # the probe could not tell
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
                              max_bytes=10**6, data=data, probe=lambda d, rel, pw: facts))
    assert opened == ["here"]
    assert sum(c.page_count for c in chunks) == 2


async def test_a_run_with_probes_writes_what_a_run_without_them_writes(
    tmp_path: Path, fake_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty PDFs, one repaired, one damaged: the same outputs and failures either way, and
    with the process started before the run, the sendable PDFs are not opened by the run."""
    source = tmp_path / "in"
    source.mkdir()
    for i in range(40):
        (source / f"doc{i:02d}.pdf").write_bytes(pdf_bytes([f"document {i} page {p}" for p in (1, 2)]))
    (source / "repaired.pdf").write_bytes(hostile.no_xref_pdf(["needs", "repair"]))
    (source / "damaged.pdf").write_bytes(hostile.truncated_pdf(["gone", "for good"]))
    server = await fake_server()

    made: list[PdfProbes] = []

    class StartedProbes(PdfProbes):
        def __init__(self) -> None:
            super().__init__(start_after=1, cores=2)
            made.append(self)
            warm(self, pdf_bytes(["warm-up"]))
            self.answered = 0

    monkeypatch.setattr(split_pool_module, "PdfProbes", StartedProbes)
    with_probes = await run_pipeline(source, tmp_path / "with", server.url)
    monkeypatch.setattr(split_pool_module, "PdfProbes", lambda: PdfProbes(cores=1))
    without = await run_pipeline(source, tmp_path / "without", server.url)

    assert made and made[0].answered == 41  # the forty and the repaired one; not the damaged one
    pid = made[0].pid
    assert pid is not None and made[0]._closed
    with pytest.raises(ProcessLookupError):  # the run killed its process at the end
        os.kill(pid, 0)
    for report in (with_probes, without):
        assert (report.documents_done, report.documents_failed) == (41, 1)
    for name in ("doc07.pdf", "repaired.pdf"):
        a = load_json(tmp_path / "with" / f"{name}.json")
        b = load_json(tmp_path / "without" / f"{name}.json")
        assert a["pages"] == b["pages"]
        for key in ("pages", "chunks", "repaired", "repair_notes"):
            assert a["source"][key] == b["source"][key], key
    assert load_json(tmp_path / "with" / "repaired.pdf.json")["source"].get("repaired") is True
