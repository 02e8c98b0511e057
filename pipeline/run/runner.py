"""The run around the documents: the lock, signals, feeding the plan to a pool of document jobs,
stopping, and the report with its exit code.

One document's path is `pipeline.run.document_job`; how a chunk is answered is the transport's
(`pipeline.transport`). The pool opens documents while the transport wants more requests ready
(its `demand()`, sized by Little's law from the measured latency and rate) or, for a fixed
`workers`, up to that many; memory stays bounded by a ceiling on open documents and their bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

from pipeline.backends.base import Backend
from pipeline.budget import Budget
from pipeline.config import Settings
from pipeline.errors import ConfigError, FatalError
from pipeline.gc_pacing import CollectorPacing
from pipeline.logsetup import get_logger, redact
from pipeline.malloc_arenas import FreePageTrim
from pipeline.manifest import (
    Manifest,
    NewStat,
    PlannedDocument,
    SkippedFile,
    manifest_path,
    state_dir,
)
from pipeline.manifest.writer import AsyncManifest
from pipeline.pricing import batch_price, price_per_1000_pages
from pipeline.run.batch_ahead import one_batch_ahead
from pipeline.run.content_share import ContentShare
from pipeline.run.document_job import (
    DocumentLimits,
    DocumentResult,
    DocumentStatus,
    JobContext,
)
from pipeline.run.done_twin import options_sha256
from pipeline.run.dry_run import dry_run_estimate
from pipeline.run.outcome import Outcome, StopReason, StopRequest, decide_outcome, exit_code
from pipeline.run.pdf_probes import ONE_CORE
from pipeline.run.pool import DocumentPool, PoolHooks
from pipeline.run.progress import ProgressDisplay, resolve_mode
from pipeline.run.report import Failure, RunReport
from pipeline.run.split_pool import SplitPool
from pipeline.run.ticker import RunTicker
from pipeline.run.transports import build_transport, cluster_backend
from pipeline.stages.discover import Skipped
from pipeline.stages.plan import Decision, PlanItem
from pipeline.stages.planner import (
    PlanEvent,
    PlanTally,
    Touch,
    local_processes,
    plan_events,
    take,
)
from pipeline.timefmt import iso
from pipeline.transport.base import RunTransport
from pipeline.transport.endpoints import MultiEndpointTransport
from pipeline.transport.ratelimit import RateLimiter
from pipeline.transport.retry import RetryStats
from pipeline.transport.sync import SyncTransport

PLAN_BATCH = 256  # files planned per trip to a thread
PLAN_CLOSE_WAIT_S = 5.0  # a closed plan waits this long for the batch in hand (a hung read)
CHUNKS_IN_FLIGHT_AUTO = 8  # requests of one document at once when workers/max_in_flight are auto
BATCH_WORKERS = 32  # batch mode: documents cut into request lines at once


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def fixed_workers(s: Settings) -> int | None:
    """Documents open at once when that is fixed: the setting, or for the local engine twice its
    processes (it is the limit, not a rate); None when the transport's demand sizes the pool."""
    if s.limits.workers:
        return s.limits.workers
    if s.service.backend == "local":
        return 2 * local_processes(s)
    return None


def document_limits(s: Settings) -> DocumentLimits:
    if s.limits.workers and s.limits.max_in_flight:
        per_document = max(1, s.limits.max_in_flight // s.limits.workers)
    else:
        per_document = min(s.limits.max_in_flight or CHUNKS_IN_FLIGHT_AUTO, CHUNKS_IN_FLIGHT_AUTO)
    return DocumentLimits(
        document_timeout=s.limits.document_timeout,
        max_document_bytes=s.limits.max_document_bytes,
        max_pages_per_request=s.limits.max_pages_per_request,
        max_bytes_per_request=s.limits.max_bytes_per_request,
        max_pages_per_document=None if s.limits.allow_large_documents else s.limits.max_pages_per_document,
        chunks_in_flight=per_document,
        retry_attempts=s.service.retry_attempts,
        pdf_passwords=tuple(s.run.pdf_passwords),
    )


class Run:
    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        if settings.run.input is None or settings.run.output is None:
            raise ValueError("settings.run.input and settings.run.output are required")
        self.s = settings
        self.input = settings.run.input.resolve()
        self.output = settings.run.output.resolve()
        self.state = state_dir(self.output)
        self.run_id = new_run_id()
        self.log = get_logger().bind(run_id=self.run_id)
        svc = settings.service
        self.price = price_per_1000_pages(svc.backend, svc.model, svc.price_per_1000_pages)
        if settings.service.mode == "batch":  # batch mode (docs/batch.md): the Batch API's price
            self.price = batch_price(self.price)
        self.stop: StopRequest | None = None
        self.fatal: FatalError | None = None
        self.budget = Budget(settings.limits.max_pages, settings.limits.max_cost, self.price)
        self.transport: RunTransport | None = None if settings.command.dry_run else build_transport(
            settings, run_id=self.run_id, batch_folder=self.state / "batch", budget=self.budget,
            backend=backend, log=self.log)
        self.workers = fixed_workers(settings)
        if settings.service.mode == "batch":  # documents are cut into request lines: docs/batch.md
            self.workers = self.workers or BATCH_WORKERS
        self.splitter = SplitPool(min(self.workers or 4, 8))
        self._cluster = cluster_backend(self.transport)  # the local engine on Dask, or None
        self.pool = self._make_pool()
        self._grace_handle: asyncio.TimerHandle | None = None
        self._runtime_handle: asyncio.TimerHandle | None = None
        self.progress = ProgressDisplay(resolve_mode(settings.run.progress), sys.stderr, self.log)
        self.started = time.time()
        self.report = RunReport(
            run_id=self.run_id, started_at=iso(self.started), backend=settings.service.backend,
            model=settings.service.model, input=str(self.input), output=str(self.output),
            dry_run=settings.command.dry_run,
        )
        self.ticker = self._make_ticker()

    def _make_pool(self) -> DocumentPool | None:
        if self.transport is None:  # a dry run
            return None
        hooks = PoolHooks(stopping=lambda: self.stopping, on_result=self._record,
                          on_interrupted=self._interrupted, on_fatal=self.abort,
                          on_plan_error=self._plan_broke)
        cluster = self._cluster
        sized_by_cluster = cluster is not None and not self.s.limits.workers
        return DocumentPool(self.transport, hooks, workers=self.workers,
                            cluster_processes=(lambda: cluster.processes) if sized_by_cluster else None)

    def _hosted_limiter(self) -> RateLimiter | None:
        """The one rate limiter of a single hosted endpoint (progress, metrics, the report's
        rate line); None for the local engine, several endpoints or batch mode."""
        if isinstance(self.transport, SyncTransport) and self.s.service.backend != "local":
            return self.transport.limiter
        return None

    def _make_ticker(self) -> RunTicker:
        ticker = RunTicker(self.report, lambda: self.stats, self.progress,
                           self.s.run.metrics_file or self.state / "metrics.prom",
                           self.s.run.progress_interval, self.log,
                           lambda: self.transport.bytes_sent if self.transport else 0)
        if isinstance(self.transport, MultiEndpointTransport):
            ticker.endpoints = self.transport.endpoint_figures
        limiter = self._hosted_limiter()
        if limiter is not None:
            ticker.limiter = limiter.snapshot
        cluster = self._cluster
        if cluster is not None:
            self.report.cluster = cluster.cluster
            ticker.workers = lambda: cluster.workers
        return ticker

    @property
    def stats(self) -> RetryStats:
        return self.transport.stats if self.transport else RetryStats()

    @property
    def stopping(self) -> bool:
        return self.stop is not None or self.fatal is not None

    # ---- the run ----------------------------------------------------------------------------
    async def execute(self) -> RunReport:
        if self.output == self.input:
            raise ConfigError(
                f"the output folder is the input folder ({self.input}): outputs would be read back"
                " as documents; choose another --output"
            )
        if self.s.command.dry_run:
            await self._with_signals(self._dry_run())
            return self.report
        from pipeline.run.lock import RunLock

        with contextlib.ExitStack() as held:
            try:
                self.output.mkdir(parents=True, exist_ok=True)
                held.enter_context(RunLock(self.state))
            except (NotADirectoryError, FileExistsError, PermissionError) as exc:
                raise ConfigError(
                    f"cannot use {self.output} as the output folder: {exc.strerror or exc}"
                ) from None
            manifest = Manifest(manifest_path(self.output))
            held.callback(manifest.close)
            await self._with_signals(self._plan_and_work(manifest))
        return self.report

    async def _with_signals(self, work: Any) -> None:
        """Signals are handled from the start: a SIGTERM during a long scan still ends with a
        clean stop (130), not a kill."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig, reason in ((signal.SIGINT, StopReason.SIGINT), (signal.SIGTERM, StopReason.SIGTERM)):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop, StopRequest(reason))
                installed.append(sig)
        try:
            await work
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _dry_run(self) -> None:
        """Plan and estimate, calling nothing and writing nothing (run/dry_run.py)."""
        tally = PlanTally()
        self.report.estimate = await asyncio.to_thread(
            dry_run_estimate, self.s, self.input, self.output, self.price, tally,
            self.report.failures.append)
        self._record_plan(tally)
        self._finish(None)

    async def _plan_and_work(self, manifest: Manifest) -> None:
        manifest.start_run(self.run_id)
        tally = PlanTally()
        reader = Manifest.reader(manifest.path)
        db = AsyncManifest(manifest)
        assert self.transport is not None
        try:
            events = plan_events(self.s.run, self.s.command, self.input, self.output, reader.lookup, tally)
            if self.s.limits.max_runtime:
                self._runtime_handle = asyncio.get_running_loop().call_later(
                    self.s.limits.max_runtime, self.request_stop,
                    StopRequest(StopReason.BUDGET, f"--max-runtime {self.s.limits.max_runtime:g} s"))
            trim = FreePageTrim()  # freed pages back to the system (before any task starts)
            db.start()
            ticker = asyncio.create_task(self.ticker.tick_forever(db))
            collector = asyncio.create_task(CollectorPacing().run())  # no full-GC stalls
            trimmer = asyncio.create_task(trim.run())
            try:
                if self.s.service.mode == "batch":  # collect, submit, wait: docs/batch.md
                    from pipeline.run.batch_run import run_batch

                    await run_batch(self, events, tally, db)
                else:
                    await self.process(self.planned_documents(events, tally, db), self.job_context(db))
            finally:
                ticker.cancel()
                collector.cancel()  # before any await: a failed ticker must not leave it on
                trimmer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
                with contextlib.suppress(asyncio.CancelledError):
                    await trimmer
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                self.progress.clear()
                for handle in (self._grace_handle, self._runtime_handle):
                    if handle:
                        handle.cancel()
                await self.transport.close()
                await db.stop()
                self.splitter.shutdown()
        finally:
            reader.close()
        self._record_plan(tally)
        self.report.bytes_sent = self.transport.bytes_sent
        self._finish(manifest)

    def job_context(self, db: AsyncManifest) -> JobContext:
        assert self.pool is not None
        return JobContext(
            output=self.output, run_id=self.run_id, backend=self.s.backend, model=self.s.model,
            price_per_1000=self.price, limits=document_limits(self.s), manifest=db,
            transport=self.pool.watch, budget=self.budget, splitter=self.splitter,
            stopping=lambda: self.stopping, request_stop=self.request_stop,
            outputs=self.s.outputs,
            # Batch mode shares content in its request lines (one custom_id for the same bytes).
            share=None if self.s.service.mode == "batch" else ContentShare(),
            options_sha256=options_sha256(self.s), take_done_twins=not self.s.command.force,
        )

    def _record_plan(self, tally: PlanTally) -> None:
        self.report.plan = dict(tally.counts)
        self.ticker.unchanged = tally.counts.get(Decision.UNCHANGED.value, 0)
        self.report.failed_earlier = tally.failed_earlier
        self.report.ignored = [Failure(i.rel, i.category, i.reason) for i in tally.ignored]

    def planned_documents(self, events: Iterator[PlanEvent], tally: PlanTally,
                          db: AsyncManifest) -> AsyncIterator[PlanItem]:
        """The documents to process, planned a batch of files at a time, one batch ahead of
        the documents being opened (run/batch_ahead.py); each batch is recorded as pending
        before its work starts."""
        return one_batch_ahead(lambda: self._plan_batch(events, tally, db),
                               lambda: self.stopping, close_wait_s=PLAN_CLOSE_WAIT_S)

    async def _plan_batch(self, events: Iterator[PlanEvent], tally: PlanTally,
                          db: AsyncManifest) -> list[PlanItem] | None:
        """Plan the next batch of files and record it; None when the walk has ended."""
        batch = await asyncio.to_thread(take, events, PLAN_BATCH)
        if not batch:
            return None  # the planner said "plan" when its walk ended
        todo = [e for e in batch if isinstance(e, PlanItem)]
        skipped: list[SkippedFile] = []
        restated: list[NewStat] = []
        for event in batch:
            if isinstance(event, Skipped):
                skipped.append(SkippedFile(event.rel, event.category,
                                           f"{event.rel}: {event.reason}", event.size,
                                           event.mtime_ns))
            elif isinstance(event, Touch):
                restated.append(NewStat(event.rel, event.size, event.mtime_ns))
        if todo or skipped or restated:
            # One transaction for the batch: one per skipped or touched file was a disk sync
            # each (a tree copied again moves every file's mtime).
            await db.record_plan_batch([
                PlannedDocument(i.source.rel, i.source.size, i.source.mtime_ns,
                                i.source.media_type)
                for i in todo
            ], self.run_id, skipped=skipped, restated=restated)
        for skip in skipped:
            self.record_failure(Failure(skip.path, skip.category, skip.message))
        self.ticker.documents_total = tally.todo + tally.bad
        return todo

    # ---- the pool ---------------------------------------------------------------------------
    async def process(self, todo: AsyncIterator[PlanItem], ctx: JobContext) -> None:
        """Run the planned documents through the pool (run/pool.py); a broken plan ends the
        run fatal once the open documents have ended, with its report."""
        assert self.pool is not None
        plan_error = await self.pool.run(todo, ctx)
        if plan_error is not None and self.fatal is None:
            self.fatal = FatalError(
                f"planning the input failed: {type(plan_error).__name__}: {plan_error}",
                hint="documents done so far are kept and the run is resumable; if the input is"
                     " readable, report this as a bug")
            self.log.error("fatal", error=redact(str(self.fatal)))

    def _plan_broke(self, exc: Exception) -> None:
        self.log.exception("planning failed")  # called from the pool's except clause
        self.request_stop(StopRequest(StopReason.PLANNING_ERROR, str(exc)))

    def _interrupted(self) -> None:
        self.report.documents_interrupted += 1

    def _record(self, result: DocumentResult) -> None:
        r = self.report
        if result.status == DocumentStatus.DEFERRED:  # answered later: counted when stored
            return
        if result.status == DocumentStatus.INTERRUPTED:
            r.documents_interrupted += 1
        elif result.status == DocumentStatus.FAILED:
            assert result.failure is not None, "a failed document carries its failure"
            self.record_failure(result.failure)
        elif result.status == DocumentStatus.DONE:
            r.count_done(result)
            if result.source and result.source.get("repaired"):
                self.log.warning("repaired", path=result.rel,
                                 notes=result.source.get("repair_notes"))
            # A line per document only where it is the progress (JSON events); a bar or
            # --progress off shows none.
            log = self.log.info if self.progress.mode == "json" else self.log.debug
            log("document", path=result.rel, state="done", pages=result.pages,
                seconds=result.seconds)

    def record_failure(self, failure: Failure) -> None:
        self.report.count_failure(failure)
        self.log.warning("document", path=failure.path, state="failed", category=failure.category,
                         error=failure.message)

    # ---- stopping ---------------------------------------------------------------------------
    def request_stop(self, request: StopRequest) -> None:
        """Stop dispatching; requests in flight get `shutdown_grace` seconds to finish."""
        if self.stop is not None:
            if request.reason.is_signal:
                self.log.warning("second signal: stopping now", signal=str(request.reason))
                self._cancel_all()
            return
        self.stop = request
        if request.reason != StopReason.BUDGET and self.transport:
            # Requests not sent yet stay unsent; within a budget, reserved ones may go.
            self.transport.stop()
        if request.reason == StopReason.BUDGET:
            self.report.message = f"budget reached ({request.detail})"
        else:
            self.report.message = self.report.message or f"stopped by {request.reason}"
        in_flight = self.transport.in_flight if self.transport else 0
        self.log.warning(
            "stopping", reason=str(request.reason), grace_s=self.s.run.shutdown_grace,
            in_flight=in_flight,
            message=f"waiting up to {self.s.run.shutdown_grace:g} s for {in_flight} requests in flight;"
                    " Ctrl-C again to stop now",
        )
        self._grace_handle = asyncio.get_running_loop().call_later(self.s.run.shutdown_grace,
                                                                   self._cancel_all)

    def _cancel_all(self) -> None:
        if self.pool:
            self.pool.cancel_all()

    def abort(self, error: FatalError) -> None:
        if self.fatal is None:
            self.fatal = error
            self.log.error("fatal", error=redact(str(error)))
        if self.transport:
            self.transport.stop()
        self._cancel_all()

    def _note_probes(self, r: RunReport) -> None:
        """The PDF probe process in the report; a warning when it went off for a reason an
        operator may want to look at (a PDF that takes qpdf over 5 s, a process limit)."""
        probes = self.splitter.probes
        r.pdf_probes = probes.summary()
        reason = probes.off_because
        if reason is not None and reason != ONE_CORE:
            r.warnings.append(f"the PDF probe process went off ({reason}); PDFs were opened in"
                              " the run's own process from then on")
            r.warnings_total += 1

    def has_stuck_threads(self) -> bool:
        """True when a split abandoned after a timeout is still running (see cli.main)."""
        return self.splitter.has_stuck_threads()

    # ---- the end ----------------------------------------------------------------------------
    def _finish(self, manifest: Manifest | None) -> None:
        """Close the report: outcome, exit code, request figures; save it when the run wrote."""
        r = self.report
        now = time.time()
        r.finished_at = iso(now)
        r.duration_s = round(now - self.started, 3)
        r.cost = round(r.cost, 6)
        stats = self.stats
        r.requests = {
            "attempts": stats.attempts,
            "retries": stats.retries,
            "throttled": stats.throttled,
            "by_status": dict(stats.by_status),
        }
        if isinstance(self.transport, MultiEndpointTransport):
            r.requests["endpoints"] = self.transport.endpoint_figures()
        if self._cluster is not None:
            # The ticker samples the count now and then; a worker that joined and worked
            # between two ticks (or after the last) is still one the run had.
            r.workers = max(r.workers or 0, self._cluster.peak_workers)
        limiter = self._hosted_limiter()
        if limiter is not None:
            r.requests["rate_limit"] = limiter.summary()
        self._note_probes(r)
        outcome = decide_outcome(fatal=self.fatal is not None, stop=self.stop,
                                 failed_now=r.documents_failed,
                                 failed_earlier=0 if self.s.command.dry_run else r.failed_earlier)
        r.outcome, r.exit_code = str(outcome), int(exit_code(outcome))
        if outcome == Outcome.FATAL:
            r.message = redact(str(self.fatal))
        if manifest is None:
            return
        try:
            manifest.finish_run(self.run_id, r.exit_code, r.to_dict())
            r.write(self.state / "runs")
        except (OSError, FatalError) as exc:
            self.log.error("run report not saved", error=redact(str(exc)))
        self.ticker.write_final_metrics(manifest)


__all__ = ["Run", "document_limits"]

