"""The run: lock, discover, plan, then an asyncio worker pool over documents; report at the end.

Documents flow through a bounded queue to `workers` tasks. Inside a document, chunks are cut one
at a time (in a thread: pypdf is CPU work) and sent concurrently up to `chunks_per_document`, so
memory holds at most workers x chunks_per_document chunks whatever the tree's or a PDF's size.
Every answer is checkpointed in the manifest before anything else happens with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import secrets
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.backends.base import Backend
from pipeline.config import Settings
from pipeline.errors import (
    Category,
    ConfigError,
    DocumentError,
    ExitCode,
    FatalError,
    RetryableError,
    StopRequested,
    TooLargeError,
)
from pipeline.logsetup import get_logger, redact
from pipeline.manifest import Manifest, PlannedDocument
from pipeline.manifest.writer import ManifestWriter
from pipeline.models import Chunk
from pipeline.pricing import cost, price_per_1000_pages
from pipeline.run import crashpoints
from pipeline.run.budget import Budget
from pipeline.run.metrics import MetricsSnapshot, write_metrics
from pipeline.run.progress import ProgressDisplay, ProgressSnapshot
from pipeline.run.report import Failure, RunReport
from pipeline.stages.discover import STATE_DIR, Skipped
from pipeline.stages.merge import merge_responses
from pipeline.stages.plan import Decision, PlanItem, file_sha256
from pipeline.stages.planner import PlanEvent, PlanTally, Touch, estimate, plan_events, take
from pipeline.stages.sniff import PDF
from pipeline.stages.split import OpenedPdf, iter_chunks
from pipeline.stages.store import remove_outputs, write_document
from pipeline.transport.ratelimit import RateLimiter
from pipeline.transport.retry import EndpointHealth, RetryPolicy, RetryStats, call_with_retry

MANIFEST_NAME = "manifest.sqlite3"
PLAN_BATCH = 256  # files planned per trip to a thread


def state_dir(output: Path) -> Path:
    return output / STATE_DIR


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def build_backend(settings: Settings) -> Backend:
    if settings.backend == "local":
        from pipeline.backends.local import LocalBackend

        return LocalBackend(settings.local, model=settings.model)
    from pipeline.backends.mistral import MistralBackend

    return MistralBackend(settings)


class Run:
    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        if settings.input is None or settings.output is None:
            raise ValueError("settings.input and settings.output are required")
        self.s = settings
        self.input = settings.input.resolve()
        self.output = settings.output.resolve()
        self.state = state_dir(self.output)
        self.run_id = new_run_id()
        self.log = get_logger().bind(run_id=self.run_id)
        self._backend = backend
        self.price = price_per_1000_pages(settings.backend, settings.model, settings.price_per_1000_pages)
        self.stopping = False
        self.fatal: FatalError | None = None
        self.stats = RetryStats()
        self.limiter = RateLimiter(settings.rps, settings.max_in_flight)
        self.health = EndpointHealth(settings.endpoint_deadline,
                                     throttle_deadline=settings.throttle_deadline)
        self.policy = RetryPolicy(settings.retry_attempts, settings.retry_initial, settings.retry_max)
        self.chunks_per_document = max(1, settings.max_in_flight // settings.workers)
        self._tasks: list[asyncio.Task[Any]] = []
        self._grace_handle: asyncio.TimerHandle | None = None
        self._runtime_handle: asyncio.TimerHandle | None = None
        self._split_pool = ThreadPoolExecutor(settings.workers, "ocr-split")
        self._abandoned_pools: list[ThreadPoolExecutor] = []
        self.budget = Budget(settings.max_pages, settings.max_cost, self.price)
        self.metrics_path = settings.metrics_file or self.state / "metrics.prom"
        mode = settings.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "json"
        self.progress = ProgressDisplay(mode, sys.stderr, self.log)
        self.documents_total = 0
        self.unchanged = 0
        self.last_success: float | None = None
        self.manifest_counts: dict[str, int] = {}
        self.bytes_sent = 0
        self._backend_in_use: Backend | None = None
        self.started = time.time()
        self.report = RunReport(
            run_id=self.run_id,
            started_at=_iso(self.started),
            backend=settings.backend,
            model=settings.model,
            input=str(self.input),
            output=str(self.output),
            dry_run=settings.dry_run,
        )

    # ---- planning ---------------------------------------------------------------------------
    def estimate(self, todo: Iterable[PlanItem]) -> dict[str, Any]:
        return estimate(self.s, todo, self.price)

    # ---- the run ----------------------------------------------------------------------------
    async def execute(self) -> RunReport:
        from pipeline.run.lock import RunLock

        if self.output == self.input:
            raise ConfigError(
                f"the output folder is the input folder ({self.input}): outputs would be read back"
                " as documents; choose another --output"
            )
        with contextlib.ExitStack() as held:
            try:
                self.output.mkdir(parents=True, exist_ok=True)
                held.enter_context(RunLock(self.state))
            except (NotADirectoryError, FileExistsError, PermissionError) as exc:
                raise ConfigError(
                    f"cannot use {self.output} as the output folder: {exc.strerror or exc}"
                ) from None
            manifest = Manifest(self.state / MANIFEST_NAME)
            held.callback(manifest.close)
            await self._execute(manifest)
        return self.report

    async def _execute(self, manifest: Manifest) -> None:
        """Signals are handled from the start: a SIGTERM during a long scan still ends with a
        clean stop (130), not a kill."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
                installed.append(sig)
        try:
            await self._plan_and_work(manifest)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _plan_and_work(self, manifest: Manifest) -> None:
        if not self.s.dry_run:
            manifest.start_run(self.run_id)
        tally = PlanTally()
        reader = Manifest.reader(manifest.path)
        try:
            events = plan_events(self.s, self.input, self.output, reader.lookup, tally)
            if self.s.dry_run:
                await asyncio.to_thread(self._dry_run, events)
                self._record_plan(tally)
                self.log.info("plan", todo=tally.todo, **dict(tally.counts))
                self._finish(manifest, record=False)
                return
            await self._work(events, tally, manifest)
        finally:
            reader.close()

    def _dry_run(self, events: Iterator[PlanEvent]) -> None:
        def todo() -> Iterator[PlanItem]:
            for event in events:
                if isinstance(event, PlanItem):
                    yield event
                elif isinstance(event, Skipped):
                    self.report.failures.append(Failure(event.rel, event.category,
                                                        f"{event.rel}: {event.reason}"))

        self.report.estimate = self.estimate(todo())

    def _record_plan(self, tally: PlanTally) -> None:
        self.report.plan = dict(tally.counts)
        self.unchanged = tally.counts.get(Decision.UNCHANGED.value, 0)
        self.report.failed_earlier = tally.failed_earlier
        self.report.ignored = [Failure(i.rel, i.category, i.reason) for i in tally.ignored]

    async def _work(self, events: Iterator[PlanEvent], tally: PlanTally,
                    manifest: Manifest) -> None:
        backend = self._backend or build_backend(self.s)
        self._backend_in_use = backend
        loop = asyncio.get_running_loop()
        if self.s.max_runtime:
            self._runtime_handle = loop.call_later(
                self.s.max_runtime, self.request_stop, f"budget: --max-runtime {self.s.max_runtime:g} s"
            )
        self.db = ManifestWriter(manifest)
        self.db.start()
        ticker = asyncio.create_task(self._tick_forever(manifest))
        try:
            await self._pool(self._planned(events, tally, manifest), backend, manifest)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self.progress.clear()
            for handle in (self._grace_handle, self._runtime_handle):
                if handle:
                    handle.cancel()
            await backend.close()
            await self.db.stop()
            self._split_pool.shutdown(wait=False, cancel_futures=True)
        self._record_plan(tally)
        self.report.bytes_sent = self._bytes_sent()
        self._finish(manifest, record=True)

    async def _planned(self, events: Iterator[PlanEvent], tally: PlanTally,
                       manifest: Manifest) -> AsyncIterator[PlanItem]:
        """The documents to process, planned a batch of files at a time while earlier ones are
        already being processed; each batch is recorded as pending before its work starts."""
        while not self.stopping:
            batch = await asyncio.to_thread(take, events, PLAN_BATCH)
            if not batch:
                self.log.info("plan", todo=tally.todo, **dict(tally.counts))
                return
            todo = [e for e in batch if isinstance(e, PlanItem)]
            for event in batch:
                if isinstance(event, Skipped):
                    message = f"{event.rel}: {event.reason}"
                    await self.db.run(manifest.fail, event.rel, event.category, message,
                                      size=event.size, mtime_ns=event.mtime_ns)
                    self._record_failure(event.rel, event.category, message)
                elif isinstance(event, Touch):
                    await self.db.run(manifest.touch_unchanged, event.rel, event.size,
                                      event.mtime_ns)
            if todo:
                await self.db.run(manifest.record_plan, [
                    PlannedDocument(i.source.rel, i.source.size, i.source.mtime_ns,
                                    i.source.media_type)
                    for i in todo
                ], self.run_id)
            self.documents_total = tally.todo + tally.bad
            for item in todo:
                yield item

    # ---- progress and metrics ---------------------------------------------------------------
    def _bytes_sent(self) -> int:
        return int(getattr(self._backend_in_use, "bytes_sent", 0) or 0)

    def progress_snapshot(self) -> ProgressSnapshot:
        r = self.report
        return ProgressSnapshot(
            documents_total=self.documents_total,
            documents_done=r.documents_done,
            documents_failed=r.documents_failed,
            pages_done=r.pages_done,
            retries=self.stats.retries,
            throttled=self.stats.throttled,
            elapsed_s=time.time() - self.started,
        )

    def metrics_snapshot(self, *, in_progress: bool) -> MetricsSnapshot:
        r = self.report
        return MetricsSnapshot(
            documents={
                "done": r.documents_done,
                "failed": r.documents_failed,
                "interrupted": r.documents_interrupted,
                "unchanged": self.unchanged,
                "todo": self.documents_total,
            },
            pages={"done": r.pages_done, "from_checkpoint": r.pages_from_checkpoints},
            requests_by_status=dict(self.stats.by_status),
            retries=self.stats.retries,
            throttled=self.stats.throttled,
            bytes_sent=self._bytes_sent(),
            cost=round(r.cost, 6),
            duration_s=round(time.time() - self.started, 3),
            in_progress=in_progress,
            exit_code=None if in_progress else r.exit_code,
            last_success=self.last_success,
            manifest_documents=self.manifest_counts,
        )

    async def _refresh_manifest_figures(self, manifest: Manifest) -> None:
        try:
            self.last_success = await self.db.run(manifest.last_success)
            self.manifest_counts = await self.db.run(manifest.counts)
        except (sqlite3.Error, FatalError) as exc:
            self.log.warning("manifest figures not read", error=str(exc))

    def _write_metrics(self, manifest: Manifest, *, in_progress: bool) -> None:
        try:
            if not in_progress:
                self.last_success = manifest.last_success()
                self.manifest_counts = manifest.counts()
            write_metrics(self.metrics_path, self.metrics_snapshot(in_progress=in_progress))
        except (OSError, sqlite3.Error) as exc:
            self.log.warning("metrics file not written", path=str(self.metrics_path),
                             error=str(exc))

    async def _tick_forever(self, manifest: Manifest) -> None:
        """Progress display and metrics file, refreshed while the pool works."""
        bar = self.progress.mode == "bar"
        interval = 0.5 if bar else self.s.progress_interval
        since_metrics = 0.0
        await self._refresh_manifest_figures(manifest)
        self._write_metrics(manifest, in_progress=True)
        while True:
            await asyncio.sleep(interval)
            self.progress.show(self.progress_snapshot())
            since_metrics += interval
            if since_metrics >= self.s.progress_interval:
                since_metrics = 0.0
                await self._refresh_manifest_figures(manifest)
                self._write_metrics(manifest, in_progress=True)

    async def _pool(self, todo: AsyncIterator[PlanItem], backend: Backend,
                    manifest: Manifest) -> None:
        queue: asyncio.Queue[PlanItem | None] = asyncio.Queue(maxsize=self.s.workers * 2)
        planning_error: list[BaseException] = []

        async def produce() -> None:
            try:
                async for item in todo:
                    if self.stopping:
                        break
                    await queue.put(item)
            except FatalError as exc:
                self._abort(exc)
            except Exception as exc:  # planning broke: stop, and say why after the workers end
                planning_error.append(exc)
                self.request_stop("an error while planning")
            finally:
                if self.stopping:  # queued documents stay pending; make room for the sentinels
                    while not queue.empty():
                        queue.get_nowait()
                for _ in range(self.s.workers):
                    await queue.put(None)

        async def work() -> None:
            while True:
                item = await queue.get()
                if item is None or self.stopping:
                    return
                await self._document(item, backend, manifest)

        producer = asyncio.create_task(produce())
        self._tasks = [asyncio.create_task(work()) for _ in range(self.s.workers)]
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        for result in [*results, *planning_error]:
            if isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError | FatalError
            ):
                raise result

    def request_stop(self, reason: str) -> None:
        """Stop dispatching; in-flight requests get `shutdown_grace` seconds to finish."""
        if self.stopping:
            if reason in ("SIGINT", "SIGTERM"):
                self.log.warning("second signal: stopping now", signal=reason)
                self._cancel_all()
            return
        self.stopping = True
        if not reason.startswith("budget"):
            # Requests not sent yet stay unsent; within a budget, reserved ones may go.
            self.limiter.close()
        self.report.message = self.report.message or f"stopped by {reason}"
        self.log.warning("stopping", reason=reason, grace_s=self.s.shutdown_grace)
        if reason in ("SIGINT", "SIGTERM"):
            self.report.outcome = "interrupted"
        elif reason.startswith("budget"):
            self.report.outcome = "budget"
            self.report.message = f"budget reached ({reason.removeprefix('budget: ')})"
        loop = asyncio.get_running_loop()
        self._grace_handle = loop.call_later(self.s.shutdown_grace, self._cancel_all)

    def _cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _abort(self, error: FatalError) -> None:
        if self.fatal is None:
            self.fatal = error
            self.log.error("fatal", error=redact(str(error)))
        self.stopping = True
        self.limiter.close()
        self._cancel_all()

    # ---- one document -----------------------------------------------------------------------
    async def _document(self, item: PlanItem, backend: Backend, manifest: Manifest) -> None:
        try:
            await self._document_recorded(item, backend, manifest)
        except FatalError as exc:  # also from the manifest itself (disk full)
            self._abort(exc)
            raise

    async def _document_recorded(self, item: PlanItem, backend: Backend,
                                 manifest: Manifest) -> None:
        src = item.source
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.s.document_timeout):
                pages = await self._document_inner(item, backend, manifest, started)
        except StopRequested:
            await self.db.run(manifest.release, src.rel)
            self.report.documents_interrupted += 1
            return
        except asyncio.CancelledError:
            self.report.documents_interrupted += 1
            with contextlib.suppress(FatalError, asyncio.CancelledError):
                await self.db.run(manifest.release, src.rel)
            raise
        except FatalError as exc:
            with contextlib.suppress(FatalError):
                await self.db.run(manifest.release, src.rel)
            self.report.documents_interrupted += 1
            self._abort(exc)
            raise
        except TimeoutError:
            await self._fail(manifest, src.rel, Category.TIMEOUT,
                       f"{src.rel}: not finished within {self.s.document_timeout:g} s"
                       " (document_timeout); its answered chunks are kept for the next try")
            return
        except RetryableError as exc:
            await self._fail(manifest, src.rel, exc.category,
                       f"{exc.message} (gave up after {self.s.retry_attempts} tries;"
                       " answered chunks are kept, --retry-failed resumes it)")
            return
        except DocumentError as exc:
            await self._fail(manifest, src.rel, exc.category, str(exc))
            return
        except Exception as exc:  # a bug: record it against the document, keep the run going
            self.log.exception("internal error", path=src.rel)
            await self._fail(manifest, src.rel, Category.INTERNAL,
                       f"{src.rel}: unexpected {type(exc).__name__}: {exc}"
                       " (a bug in ocr-pipeline: please report it with this message)")
            return
        self.report.documents_done += 1
        self.report.pages_done += pages
        log = self.log.debug if self.progress.mode == "bar" else self.log.info
        log("document", path=src.rel, state="done", pages=pages,
            seconds=round(time.monotonic() - started, 3))

    async def _fail(self, manifest: Manifest, rel: str, category: str, message: str) -> None:
        message = redact(message if message.startswith(rel) else f"{rel}: {message}")
        await self.db.run(manifest.fail, rel, str(category), message)
        self._record_failure(rel, str(category), message)

    def _record_failure(self, rel: str, category: str, message: str) -> None:
        if not message.startswith(rel):
            message = f"{rel}: {message}"
        self.report.failures.append(Failure(rel, category, message))
        self.report.documents_failed += 1
        self.log.warning("document", path=rel, state="failed", category=category, error=message)

    async def _document_inner(
        self, item: PlanItem, backend: Backend, manifest: Manifest, started: float
    ) -> int:
        src = item.source
        try:
            st = os.stat(src.path)
            if st.st_size > self.s.max_document_bytes:
                raise TooLargeError(
                    f"{src.rel}: {st.st_size:,} bytes, above max_document_bytes"
                    f" ({self.s.max_document_bytes:,})",
                    hint="split the file, or raise max_document_bytes if the machine has the memory",
                )
            data, sha = await asyncio.to_thread(_read_and_hash, src.path)
        except FileNotFoundError:
            raise DocumentError(Category.INPUT, f"{src.rel}: file vanished before it was read")\
                from None
        except OSError as exc:
            raise DocumentError(Category.INPUT, f"{src.rel}: cannot read: {exc.strerror}",
                                hint="check its permissions") from None
        if st.st_size != len(data):
            raise DocumentError(Category.INPUT, f"{src.rel}: file changed while it was being read",
                                hint="it will be picked up by the next run")
        size = len(data)
        await self.db.run(manifest.claim, src.rel, sha, self.run_id, size=size,
                          mtime_ns=st.st_mtime_ns)
        if item.decision == Decision.CHANGED:
            remove_outputs(self.output, src.rel)
        repair_info: dict[str, Any] = {"repaired": False}
        # Known page count: the loop stops after the last chunk without one more hop to the
        # split pool (which would only say "no more"). Unknown for TIFF (frames) until the end.
        known_pages = {"total": None if src.media_type in (PDF, "image/tiff") else 1}

        def opened(pdf: OpenedPdf) -> None:
            known_pages["total"] = pdf.pages
            repair_info.update(repaired=pdf.repaired, repair_notes=pdf.repair_notes[:20])

        chunks = iter_chunks(
            src.path, src.rel, src.media_type,
            max_pages=self.s.max_pages_per_request,
            max_bytes=self.s.max_bytes_per_request,
            passwords=self.s.pdf_passwords,
            data=data,
            max_document_pages=None if self.s.allow_large_documents
            else self.s.max_pages_per_document,
            on_open=opened,
        )
        # A document no earlier run touched has no answers to reuse: skip the look-ups.
        may_have_answers = item.decision != Decision.NEW
        del data
        answers: list[tuple[Chunk, dict[str, Any] | None]] = []
        sizes: list[int] = []
        gate = asyncio.Semaphore(self.chunks_per_document)
        tasks: list[asyncio.Task[None]] = []
        reused_pages = 0

        async def send(position: int, chunk: Chunk) -> None:
            paid = False
            try:
                crashpoints.reached("request")
                response = await call_with_retry(
                    backend, chunk, self.limiter, self.policy, self.health, self.stats
                )
                paid = True
                await self.db.run(manifest.checkpoint_chunk, src.rel, sha, chunk.first_page,
                                  chunk.page_count, chunk.sha256, response)
                crashpoints.reached("chunk_persisted")
                answers[position] = (answers[position][0], response)
            finally:
                self.budget.settle(chunk.page_count, paid=paid)
                gate.release()

        try:
            while True:
                await gate.acquire()
                if self.stopping:
                    gate.release()
                    raise StopRequested()
                if any(t.done() and not t.cancelled() and t.exception() for t in tasks):
                    gate.release()
                    break  # a chunk failed for good: send no more of this document
                total = known_pages["total"]
                if total is not None and answers and answers[-1][0].last_page >= total:
                    gate.release()
                    break
                chunk = await self._split_next(chunks)
                if chunk is None:
                    gate.release()
                    break
                light = dataclasses.replace(chunk, data=b"")
                sizes.append(len(chunk.data))
                saved = None
                if may_have_answers:
                    saved = await self.db.run(manifest.chunk_response, src.rel, sha,
                                              chunk.first_page, chunk.page_count)
                answers.append((light, saved))
                if saved is not None:
                    reused_pages += chunk.page_count
                    gate.release()
                    continue
                if not self.budget.reserve(chunk.page_count):
                    gate.release()
                    self.request_stop(f"budget: {self.budget.page_limit} pages"
                                      f" (--max-pages/--max-cost)")
                    raise StopRequested()
                tasks.append(asyncio.create_task(send(len(answers) - 1, chunk)))
                del chunk
        except (StopRequested, DocumentError):
            # Requests already sent are paid for: let their answers land in the manifest.
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            with contextlib.suppress(ValueError):  # ValueError: a split still running (stuck)
                chunks.close()  # frees the open PDF now, not when garbage-collected
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            fatal = [e for e in errors if isinstance(e, FatalError | asyncio.CancelledError)]
            raise (fatal or errors)[0]
        if self.stopping and any(resp is None for _, resp in answers):
            raise StopRequested()
        merged = merge_responses([(c, r) for c, r in answers if r is not None])
        page_count = len(merged["pages"])
        doc_cost = cost(page_count, self.price)
        source = {
            "path": src.rel,
            "sha256": sha,
            "bytes": size,
            "media_type": src.media_type,
            "pages": page_count,
            "backend": self.s.backend,
            "model": self.s.model,
            "chunks": [
                {"first_page": c.first_page, "pages": c.page_count, "bytes": size,
                 "sha256": c.sha256}
                for (c, _), size in zip(answers, sizes, strict=True)
            ],
            "pages_from_checkpoint": reused_pages,
            **repair_info,
            "run_id": self.run_id,
            "seconds": round(time.monotonic() - started, 3),
            "pipeline_version": __version__,
            "processed_at": _iso(time.time()),
        }
        if repair_info["repaired"]:
            self.log.warning("repaired", path=src.rel, notes=repair_info.get("repair_notes"))
        crashpoints.reached("before_store")
        await asyncio.to_thread(write_document, self.output, src.rel, merged, source)
        crashpoints.reached("after_store")
        await self.db.run(manifest.finish, src.rel, page_count, doc_cost)
        crashpoints.reached("document_done")
        self.report.pages_from_checkpoints += reused_pages
        self.report.cost += cost(page_count - reused_pages, self.price)
        return page_count

    async def _split_next(self, chunks: Iterator[Chunk]) -> Chunk | None:
        """The next chunk, cut in the split pool (pypdf is CPU work and may, on a hostile file,
        never return: a thread cannot be killed, so an abandoned one gets a fresh pool beside it
        and the process exits without waiting for it)."""
        pool = self._split_pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, next, chunks, None)
        except asyncio.CancelledError:
            if pool is self._split_pool:
                self._abandoned_pools.append(pool)
                pool.shutdown(wait=False, cancel_futures=True)
                self._split_pool = ThreadPoolExecutor(self.s.workers, "ocr-split")
            raise

    def has_stuck_threads(self) -> bool:
        """True when a split abandoned after a timeout is still running (see cli.main)."""
        return any(t.is_alive() for pool in self._abandoned_pools for t in pool._threads)

    # ---- the end ----------------------------------------------------------------------------
    def _finish(self, manifest: Manifest, *, record: bool) -> None:
        r = self.report
        now = time.time()
        r.finished_at = _iso(now)
        r.duration_s = round(now - self.started, 3)
        r.cost = round(r.cost, 6)
        r.requests = {
            "attempts": self.stats.attempts,
            "retries": self.stats.retries,
            "throttled": self.stats.throttled,
            "by_status": dict(self.stats.by_status),
        }
        if self.fatal is not None:
            r.exit_code, r.outcome = int(ExitCode.FATAL), "fatal"
            r.message = redact(str(self.fatal))
        elif self.stopping and r.outcome == "interrupted":
            r.exit_code = int(ExitCode.INTERRUPTED)
        elif self.stopping and r.outcome == "budget":
            r.exit_code = int(ExitCode.FATAL)
        elif r.documents_failed:
            r.exit_code, r.outcome = int(ExitCode.SOME_FAILED), "some_failed"
        else:
            r.exit_code, r.outcome = int(ExitCode.OK), "ok"
        if record:
            try:
                manifest.finish_run(self.run_id, r.exit_code, r.to_dict())
                r.write(self.state / "runs")
            except (OSError, FatalError) as exc:
                self.log.error("run report not saved", error=redact(str(exc)))
            self._write_metrics(manifest, in_progress=False)


def _read_and_hash(path: Path) -> tuple[bytes, str]:
    """The file's bytes and their sha256, in one trip to a thread: hash what was read, not what
    was planned (the file may have changed since)."""
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


__all__ = ["Run", "state_dir", "file_sha256", "MANIFEST_NAME"]
