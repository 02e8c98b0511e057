"""One document's path, top to bottom: read, claim, cut into chunks, answer each chunk, assemble,
store, finish. Returns a typed `DocumentResult`; only a condition that ends the whole run
(`FatalError`) or a cancellation escapes as an exception.

The job knows nothing of how chunks are answered (a `ChunkTransport`: synchronous requests, a
batch job, a remote executor), nor of the pool that runs it. Every answer is checkpointed in the
manifest before anything else happens with it, so a crash never pays twice for a chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import __version__, crashpoints
from pipeline.backends.base import OCRResponse
from pipeline.budget import Budget
from pipeline.config.groups import OutputSettings
from pipeline.errors import (
    Category,
    DocumentError,
    FatalError,
    RetryableError,
    StopRequested,
    TooLargeError,
)
from pipeline.logsetup import redact
from pipeline.manifest.writer import AsyncManifest
from pipeline.models import Chunk
from pipeline.pricing import cost
from pipeline.reasons import exception_text
from pipeline.run.content_share import ContentKey, ContentShare, InFlight
from pipeline.run.done_twin import TWINS_TRIED, StoredTwin, load_twin, same_content_source
from pipeline.run.outcome import StopReason, StopRequest
from pipeline.run.report import Failure, tally_page_methods
from pipeline.run.split_pool import SplitPool
from pipeline.stages.confidence import LowPage
from pipeline.stages.merge import merge_responses
from pipeline.stages.plan import Decision, PlanItem
from pipeline.stages.review import annotation_schema, review
from pipeline.stages.sniff import PDF
from pipeline.stages.split import PdfFacts, iter_chunks
from pipeline.stages.store import remove_outputs, write_document
from pipeline.timefmt import iso
from pipeline.transport.base import ChunkDeferred, ChunkTransport


class DocumentStatus(enum.StrEnum):
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the run stopped first: back to pending, resumable
    DEFERRED = "deferred"  # the transport answers later (ChunkDeferred): back to pending


@dataclass(frozen=True)
class DocumentResult:
    rel: str
    status: DocumentStatus
    pages: int = 0
    pages_reused: int = 0  # answered by an earlier run's checkpoints, not paid again
    pages_same_content: int = 0  # answered for another document of the same content (dedup)
    cost: float = 0.0  # of the pages paid for in this run
    source: dict[str, Any] | None = None
    failure: Failure | None = None
    seconds: float = 0.0
    page_methods: dict[str, int] = field(default_factory=dict)  # local engine: text_layer / ocr
    low_confidence: tuple[LowPage, ...] = ()  # pages under outputs.confidence_threshold
    warnings: tuple[str, ...] = ()  # e.g. an annotation that does not match its schema


@dataclass(frozen=True)
class DocumentLimits:
    """What bounds one document's work (from the run's settings)."""

    document_timeout: float
    max_document_bytes: int
    max_pages_per_request: int
    max_bytes_per_request: int
    max_pages_per_document: int | None  # None: any size (allow_large_documents)
    chunks_in_flight: int  # requests of one document sent at once
    retry_attempts: int  # for the message of a document that gave up
    pdf_passwords: tuple[str, ...] = ()


@dataclass
class JobContext:
    """Everything a document's job uses, shared by all jobs of a run."""

    output: Path
    run_id: str
    backend: str
    model: str
    price_per_1000: float
    limits: DocumentLimits
    manifest: AsyncManifest
    transport: ChunkTransport
    budget: Budget
    splitter: SplitPool
    stopping: Callable[[], bool]
    request_stop: Callable[[StopRequest], None]
    # Batch mode: more of the `source` block for a document (the jobs that answered it).
    source_notes: Callable[[str], dict[str, Any]] | None = None
    outputs: OutputSettings = field(default_factory=OutputSettings)  # what the outputs carry
    share: ContentShare | None = None  # sync mode: one request for the same content in flight
    # Content dedup across runs: the digest of the settings that shape an answer (recorded in
    # every `source` block), and whether a finished twin's outputs may be taken (not --force).
    options_sha256: str = ""
    take_done_twins: bool = True


@dataclass
class _Cut:
    """The chunks of one document as they are cut and answered, in page order."""

    chunks: list[Chunk] = field(default_factory=list)  # without their bytes
    answers: list[OCRResponse | None] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    pages_reused: int = 0
    pages_same_content: int = 0
    same_content_as: str | None = None  # the document whose answers were taken
    total_pages: int | None = None  # known once the PDF is open (1 for a plain image)
    repair: dict[str, Any] = field(default_factory=lambda: {"repaired": False})

    def complete(self) -> bool:
        """All pages are cut: no need for one more trip to the split pool to hear "no more"."""
        return (self.total_pages is not None and bool(self.chunks)
                and self.chunks[-1].last_page >= self.total_pages)


class DocumentJob:
    def __init__(self, ctx: JobContext, item: PlanItem) -> None:
        self.ctx = ctx
        self.item = item
        self.src = item.source
        self.started = time.monotonic()
        # One job is one document: its content hash, its chunks as they are cut and answered,
        # and the gate that bounds its requests in flight.
        self.sha = ""
        self.cut = _Cut()
        self.gate = asyncio.Semaphore(ctx.limits.chunks_in_flight)

    def _result(self, status: DocumentStatus, **kw: Any) -> DocumentResult:
        return DocumentResult(self.src.rel, status, seconds=round(time.monotonic() - self.started, 3),
                              **kw)

    async def run(self) -> DocumentResult:
        """The document's outcome. Failures of the document become a FAILED result recorded in
        the manifest; a stop puts it back to pending; FatalError and cancellation propagate."""
        rel, limits = self.src.rel, self.ctx.limits
        try:
            async with asyncio.timeout(limits.document_timeout):
                return await self._process()
        except ChunkDeferred:  # its answers come later, through the manifest
            await self.ctx.manifest.release(rel)
            return self._result(DocumentStatus.DEFERRED)
        except StopRequested:
            await self.ctx.manifest.release(rel)
            return self._result(DocumentStatus.INTERRUPTED)
        except (asyncio.CancelledError, FatalError):
            with contextlib.suppress(FatalError, asyncio.CancelledError):
                await self.ctx.manifest.release(rel)
            raise
        except TimeoutError:
            return await self._fail(Category.TIMEOUT,
                                    f"not finished within {limits.document_timeout:g} s"
                                    " (document_timeout); its answered chunks are kept for the next try")
        except RetryableError as exc:
            return await self._fail(exc.category,
                                    f"{exc.message} (gave up after {limits.retry_attempts} tries;"
                                    " answered chunks are kept, --retry-failed resumes it)")
        except DocumentError as exc:
            return await self._fail(exc.category, str(exc))
        except Exception as exc:  # a bug: record it against the document, keep the run going
            return await self._fail(Category.INTERNAL,
                                    f"unexpected {type(exc).__name__}: {exception_text(exc)}"
                                    " (a bug in ocr-pipeline: please report it with this message)",
                                    internal=True)

    async def _fail(self, category: Category, message: str, *, internal: bool = False
                    ) -> DocumentResult:
        rel = self.src.rel
        message = redact(message if message.startswith(rel) else f"{rel}: {message}")
        await self.ctx.manifest.fail(rel, str(category), message)
        return self._result(DocumentStatus.FAILED, failure=Failure(rel, str(category), message))

    async def _process(self) -> DocumentResult:
        data, sha, st = await self._read()
        twins = await self.ctx.manifest.claim(
            self.src.rel, sha, self.ctx.run_id, size=len(data), mtime_ns=st.st_mtime_ns,
            twins=TWINS_TRIED if self.ctx.take_done_twins else 0)
        if self.item.decision == Decision.CHANGED:
            remove_outputs(self.ctx.output, self.src.rel)
        self.sha = sha
        twin = await self._done_twin(twins)
        if twin is not None:  # made from a finished document of the same bytes: nothing sent
            del data
            cut, merged = self.cut, twin.response
            cut.pages_same_content, cut.same_content_as = len(merged["pages"]), twin.rel
        else:
            cut = await self._answer_all(data)
            del data
            merged = merge_responses([(c, r) for c, r in zip(cut.chunks, cut.answers, strict=True)
                                      if r is not None], annotation_schema(self.ctx.outputs))
        pages = len(merged["pages"])
        source = self._source_block(sha, st.st_size, pages, cut)
        if twin is not None:
            source.update(same_content_source(twin))
        crashpoints.reached("before_store")
        await asyncio.to_thread(write_document, self.ctx.output, self.src.rel, merged, source,
                                self.ctx.outputs)
        crashpoints.reached("after_store")
        # Its own cost: pages another document of the same content paid for are not counted.
        spent = cost(pages - cut.pages_same_content, self.ctx.price_per_1000)
        await self.ctx.manifest.finish(self.src.rel, pages, spent)
        crashpoints.reached("document_done")
        methods: dict[str, int] = {}
        if twin is None:  # a twin's pages were read by nothing in this run
            tally_page_methods(methods, merged["pages"])
        notes = review(self.src.rel, merged, self.ctx.outputs)
        paid = pages - cut.pages_reused - cut.pages_same_content
        return self._result(DocumentStatus.DONE, pages=pages, pages_reused=cut.pages_reused,
                            pages_same_content=cut.pages_same_content, page_methods=methods,
                            low_confidence=notes.low_confidence, warnings=notes.warnings,
                            cost=cost(paid, self.ctx.price_per_1000), source=source)

    async def _done_twin(self, candidates: list[tuple[str, float]]) -> StoredTwin | None:
        """The first of `candidates` (finished documents of the same content, with when they
        were finished) whose stored outputs can make this one (content dedup across runs).
        A twin claimed again while its files were read (rewritten meanwhile) is not taken; nor
        one over `max_pages_per_document` (this document then fails as OCR'ing it would)."""
        limit = self.ctx.limits.max_pages_per_document
        for rel, finished_at in candidates:
            twin = await asyncio.to_thread(load_twin, self.ctx.output, rel, self.sha,
                                           self.ctx.options_sha256)
            if twin is None or (limit is not None and len(twin.response["pages"]) > limit):
                continue
            if await self.ctx.manifest.still_done(rel, finished_at):
                return twin
        return None

    async def _read(self) -> tuple[bytes, str, os.stat_result]:
        """The file's bytes and their hash (of what was read, not what was planned)."""
        rel, limits = self.src.rel, self.ctx.limits
        try:
            st = os.stat(self.src.path)
            if st.st_size > limits.max_document_bytes:
                raise TooLargeError(
                    f"{rel}: {st.st_size:,} bytes, above max_document_bytes"
                    f" ({limits.max_document_bytes:,})",
                    hint="split the file, or raise max_document_bytes if the machine has the memory",
                )
            data, sha = await asyncio.to_thread(read_and_hash, self.src.path)
        except FileNotFoundError:
            raise DocumentError(Category.INPUT, f"{rel}: file vanished before it was read") from None
        except OSError as exc:
            raise DocumentError(Category.INPUT, f"{rel}: cannot read: {exc.strerror}",
                                hint="check its permissions") from None
        if st.st_size != len(data):
            raise DocumentError(Category.INPUT, f"{rel}: file changed while it was being read",
                                hint="it will be picked up by the next run")
        return data, sha, st

    async def _probed_facts(self, data: bytes) -> PdfFacts | None:
        """A PDF small enough to go out whole: its facts from the probe process, if it can
        tell (then this process need not open it)."""
        limits = self.ctx.limits
        if self.src.media_type != PDF or len(data) > limits.max_bytes_per_request:
            return None
        return await self.ctx.splitter.probes.facts(data, self.src.rel, list(limits.pdf_passwords))

    def _chunks(self, data: bytes, cut: _Cut, known: PdfFacts | None) -> Iterator[Chunk]:
        limits = self.ctx.limits
        # Known page count: the loop stops after the last chunk without one more hop to the
        # split pool. Unknown for PDF and TIFF (frames) until the file is open.
        cut.total_pages = None if self.src.media_type in (PDF, "image/tiff") else 1

        def opened(pdf: PdfFacts) -> None:
            cut.total_pages = pdf.pages
            cut.repair.update(repaired=pdf.repaired, repair_notes=pdf.repair_notes[:20])

        return iter_chunks(
            self.src.path, self.src.rel, self.src.media_type,
            max_pages=limits.max_pages_per_request,
            max_bytes=limits.max_bytes_per_request,
            passwords=list(limits.pdf_passwords),
            data=data,
            max_document_pages=limits.max_pages_per_document,
            on_open=opened,
            known=known,
            data_sha256=self.sha or None,
        )

    async def _answer_all(self, data: bytes) -> _Cut:
        """Cut the document one chunk at a time and get every chunk's answer: from an earlier
        run's checkpoint when there is one, else through the transport, at most
        `chunks_in_flight` at once (so memory holds that many chunks, whatever the PDF's size)."""
        cut, gate = self.cut, self.gate
        chunks = self._chunks(data, cut, await self._probed_facts(data))
        sending: list[asyncio.Task[None]] = []
        try:
            while await self._next_slot(sending):
                chunk = await self.ctx.splitter.next_chunk(chunks)
                if chunk is None:
                    gate.release()
                    break
                task = await self._take(chunk)
                if task is not None:
                    sending.append(task)
                del chunk
        except (StopRequested, DocumentError):
            # Requests already sent are paid for: let their answers land in the manifest.
            await asyncio.gather(*sending, return_exceptions=True)
            raise
        except BaseException:
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
            raise
        finally:
            with contextlib.suppress(ValueError):  # ValueError: a split still running (stuck)
                chunks.close()  # frees the open PDF now, not when garbage-collected
        results = await asyncio.gather(*sending, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            fatal = [e for e in errors if isinstance(e, FatalError | asyncio.CancelledError)]
            raise (fatal or errors)[0]
        if self.ctx.stopping() and any(a is None for a in cut.answers):
            raise StopRequested()
        return cut

    async def _next_slot(self, sending: list[asyncio.Task[None]]) -> bool:
        """Wait for room for one more chunk; False when no more should be cut."""
        gate, cut = self.gate, self.cut
        await gate.acquire()
        if self.ctx.stopping():
            gate.release()
            raise StopRequested()
        failed = any(t.done() and not t.cancelled() and t.exception()
                     and not isinstance(t.exception(), ChunkDeferred) for t in sending)
        if failed or cut.complete():  # a chunk failed for good: send no more of this document
            gate.release()
            return False
        return True

    async def _take(self, chunk: Chunk) -> asyncio.Task[None] | None:
        """Record the chunk; reuse its checkpointed answer or the answer for a document of the
        same content, follow a request in flight for that content, or start sending it."""
        cut = self.cut
        position = len(cut.chunks)
        cut.chunks.append(dataclasses.replace(chunk, data=b""))
        cut.sizes.append(len(chunk.data))
        cut.answers.append(None)
        saved = await self._saved_answer(chunk)
        if saved is not None:
            cut.answers[position] = saved
            self.gate.release()
            return None
        key = self._key(chunk)
        leader = self.ctx.share.leader(key) if self.ctx.share else None
        if leader is not None:
            return asyncio.create_task(self._follow(position, chunk, leader))
        self._reserve(chunk)
        return asyncio.create_task(self._send(position, chunk, self._lead(key)))

    def _key(self, chunk: Chunk) -> ContentKey:
        return (self.sha, chunk.first_page, chunk.page_count)

    def _lead(self, key: ContentKey) -> InFlight | None:
        """Say (before the request is sent) that this document's request answers `key`."""
        share = self.ctx.share
        return share.lead(key, self.src.rel) if share and not share.leader(key) else None

    async def _saved_answer(self, chunk: Chunk) -> OCRResponse | None:
        """This document's checkpoint from an earlier run, or this run's answer for another
        document of the same content (recorded as this document's checkpoint)."""
        db, sha, cut = self.ctx.manifest, self.sha, self.cut
        if self.item.decision != Decision.NEW:  # a new document has no answers of its own
            saved = await db.chunk_response(self.src.rel, sha, chunk.first_page, chunk.page_count)
            if saved is not None:
                cut.pages_reused += chunk.page_count
                return saved
        found = await db.content_response(sha, chunk.first_page, chunk.page_count,
                                          not_path=self.src.rel)
        if found is None:
            return None
        await self._took_same_content(chunk, *found)
        return found[1]

    async def _took_same_content(self, chunk: Chunk, path: str, response: OCRResponse) -> None:
        await self.ctx.manifest.checkpoint_chunk(self.src.rel, self.sha, chunk.first_page,
                                                 chunk.page_count, chunk.sha256, response)
        self.cut.pages_same_content += chunk.page_count
        self.cut.same_content_as = self.cut.same_content_as or path

    def _reserve(self, chunk: Chunk) -> None:
        budget = self.ctx.budget
        if not budget.reserve(chunk.page_count):
            self.gate.release()
            self.ctx.request_stop(StopRequest(StopReason.BUDGET,
                                              f"{budget.page_limit} pages (--max-pages/--max-cost)"))
            raise StopRequested()

    async def _follow(self, position: int, chunk: Chunk, leader: InFlight) -> None:
        """Wait for the request another document of the same content has in flight; when it
        fails, send this document's own."""
        try:
            response = await asyncio.shield(leader.answer)
        except Exception:  # noqa: BLE001 - the leader's failure is its own; try on our own
            response = None
        if response is not None:
            try:
                await self._took_same_content(chunk, leader.path, response)
                self.cut.answers[position] = response
            finally:
                self.gate.release()
            return
        self._reserve(chunk)
        await self._send(position, chunk, self._lead(self._key(chunk)))

    async def _send(self, position: int, chunk: Chunk, lead: InFlight | None = None) -> None:
        paid = False
        response: OCRResponse | None = None
        error: BaseException | None = None
        try:
            crashpoints.reached("request")
            response = await self.ctx.transport.answer(chunk)
            paid = True
            await self.ctx.manifest.checkpoint_chunk(self.src.rel, self.sha, chunk.first_page,
                                                     chunk.page_count, chunk.sha256, response)
            crashpoints.reached("chunk_persisted")
            self.cut.answers[position] = response
        except BaseException as exc:
            error = exc
            raise
        finally:
            if lead is not None and self.ctx.share is not None:
                self.ctx.share.settle(self._key(chunk), lead,
                                      response if error is None else None, error)
            self.ctx.budget.settle(chunk.page_count, paid=paid)
            self.gate.release()

    def _source_block(self, sha: str, size: int, pages: int, cut: _Cut) -> dict[str, Any]:
        """The JSON's `source` block: where the document came from and how it was processed."""
        return {
            "path": self.src.rel,
            "sha256": sha,
            "bytes": size,
            "media_type": self.src.media_type,
            "pages": pages,
            "backend": self.ctx.backend,
            "model": self.ctx.model,
            "options_sha256": self.ctx.options_sha256,
            "chunks": [
                {"first_page": c.first_page, "pages": c.page_count, "bytes": n, "sha256": c.sha256}
                for c, n in zip(cut.chunks, cut.sizes, strict=True)
            ],
            "pages_from_checkpoint": cut.pages_reused,
            **({"pages_from_same_content": cut.pages_same_content,
                "same_content_as": cut.same_content_as} if cut.pages_same_content else {}),
            **cut.repair,
            "run_id": self.ctx.run_id,
            "seconds": round(time.monotonic() - self.started, 3),
            "pipeline_version": __version__,
            "processed_at": iso(time.time()),
            **(self.ctx.source_notes(self.src.rel) if self.ctx.source_notes else {}),
        }


def read_and_hash(path: Path) -> tuple[bytes, str]:
    """The file's bytes and their sha256, in one trip to a thread."""
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()
