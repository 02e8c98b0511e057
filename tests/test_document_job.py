"""One document's job driven alone, without the run's pool: a real PDF, a real SQLite manifest,
real output files, and a transport written here (the seam the job is built on)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.budget import Budget
from pipeline.errors import Category, RejectedError
from pipeline.manifest import Manifest, PlannedDocument, manifest_path
from pipeline.manifest.states import DocState
from pipeline.manifest.writer import AsyncManifest
from pipeline.models import Chunk, SourceFile
from pipeline.run.document_job import (
    DocumentJob,
    DocumentLimits,
    DocumentStatus,
    JobContext,
)
from pipeline.run.outcome import StopRequest
from pipeline.run.split_pool import SplitPool
from pipeline.stages.plan import Decision, PlanItem
from pipeline.stages.sniff import PDF
from tests.pdfgen import write_pdf


class ScriptedTransport:
    """Answers every page with its position; fails the chunks it is told to."""

    def __init__(self, fail_first_page: int | None = None) -> None:
        self.sent: list[tuple[int, int]] = []
        self.fail_first_page = fail_first_page

    async def answer(self, chunk: Chunk) -> dict[str, Any]:
        self.sent.append((chunk.first_page, chunk.page_count))
        if chunk.first_page == self.fail_first_page:
            raise RejectedError(f"{chunk.doc_rel}: HTTP 422: no", status=422)
        return {
            "pages": [{"index": i, "markdown": f"page {chunk.first_page + i + 1}", "images": [],
                       "dimensions": None} for i in range(chunk.page_count)],
            "model": "scripted",
            "usage_info": {"pages_processed": chunk.page_count},
        }

    async def close(self) -> None:
        pass


def limits(pages_per_request: int = 4) -> DocumentLimits:
    return DocumentLimits(document_timeout=60, max_document_bytes=10_000_000,
                          max_pages_per_request=pages_per_request, max_bytes_per_request=10_000_000,
                          max_pages_per_document=None, chunks_in_flight=2, retry_attempts=3)


class Harness:
    def __init__(self, tmp_path: Path, pages: int) -> None:
        self.input = tmp_path / "in"
        self.output = tmp_path / "out"
        self.input.mkdir()
        self.path = self.input / "doc.pdf"
        write_pdf(self.path, "doc", pages)
        self.manifest = Manifest(manifest_path(self.output))
        self.stops: list[StopRequest] = []
        self.stopping = False

    def item(self, decision: Decision = Decision.NEW) -> PlanItem:
        st = os.stat(self.path)
        source = SourceFile(self.path, "doc.pdf", st.st_size, st.st_mtime_ns, PDF)
        self.manifest.record_plan([PlannedDocument("doc.pdf", st.st_size, st.st_mtime_ns, PDF)], "r1")
        return PlanItem(source, decision)

    async def run(self, transport: ScriptedTransport, decision: Decision = Decision.NEW,
                  budget: Budget | None = None) -> Any:
        item = self.item(decision)
        db = AsyncManifest(self.manifest)
        db.start()
        splitter = SplitPool(1)
        ctx = JobContext(output=self.output, run_id="r1", backend="test", model="scripted",
                         price_per_1000=2.0, limits=limits(), manifest=db, transport=transport,
                         budget=budget or Budget(None, None, 2.0), splitter=splitter,
                         stopping=lambda: self.stopping, request_stop=self.stops.append)
        try:
            return await DocumentJob(ctx, item).run()
        finally:
            await db.stop()
            splitter.shutdown()


async def test_a_job_cuts_answers_assembles_and_stores_one_document(tmp_path: Path) -> None:
    h = Harness(tmp_path, pages=11)
    transport = ScriptedTransport()
    result = await h.run(transport)
    assert result.status == DocumentStatus.DONE
    assert (result.pages, result.pages_reused) == (11, 0)
    assert sorted(transport.sent) == [(0, 4), (4, 4), (8, 3)]
    assert result.cost == pytest.approx(11 * 2.0 / 1000)
    assert [c["pages"] for c in result.source["chunks"]] == [4, 4, 3]
    stored = json.loads((h.output / "doc.pdf.json").read_text())
    assert [p["index"] for p in stored["pages"]] == list(range(11))
    assert "page 11" in (h.output / "doc.pdf.md").read_text()
    row = h.manifest.lookup("doc.pdf")
    assert row is not None and row.state == DocState.DONE and row.pages == 11


async def test_a_rejected_chunk_fails_the_document_with_its_category_and_keeps_other_answers(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, pages=8)
    result = await h.run(ScriptedTransport(fail_first_page=4))
    assert result.status == DocumentStatus.FAILED
    assert result.failure is not None and result.failure.category == Category.REJECTED
    assert result.failure.message.startswith("doc.pdf: ")
    assert not (h.output / "doc.pdf.json").exists()
    row = h.manifest.lookup("doc.pdf")
    assert row is not None and row.state == DocState.FAILED
    # The first chunk's answer was checkpointed: a retry pays only for the chunk that failed.
    retry = ScriptedTransport()
    again = await h.run(retry, decision=Decision.RETRY)
    assert again.status == DocumentStatus.DONE and again.pages_reused == 4
    assert retry.sent == [(4, 4)]


async def test_a_stopping_run_puts_the_document_back_to_pending(tmp_path: Path) -> None:
    h = Harness(tmp_path, pages=3)
    h.stopping = True
    transport = ScriptedTransport()
    result = await h.run(transport)
    assert result.status == DocumentStatus.INTERRUPTED
    assert transport.sent == []
    row = h.manifest.lookup("doc.pdf")
    assert row is not None and row.state == DocState.PENDING


async def test_a_budget_too_small_for_the_next_chunk_asks_the_run_to_stop(tmp_path: Path) -> None:
    h = Harness(tmp_path, pages=8)
    transport = ScriptedTransport()
    result = await h.run(transport, budget=Budget(5, None, 2.0))
    assert result.status == DocumentStatus.INTERRUPTED
    assert transport.sent == [(0, 4)]  # the second chunk would pass 5 pages: never sent
    assert [str(s.reason) for s in h.stops] == ["budget"]
