"""The batch run, between the run's planning and its report:

1. recover: parts a crash left half-written are discarded (nothing was sent); sealed or
   uploaded parts go on to their jobs (a job created but not recorded is adopted);
2. collect: poll the open jobs once, download and checkpoint what has finished;
3. the pool: every planned document goes through its job as in sync mode: documents whose
   chunks are all answered are assembled and stored; chunks without an answer are queued as
   request lines and the document waits (pending);
4. submit: seal the files, upload, create the jobs;
5. wait (unless --no-wait): poll with backoff until a job ends, collect it, run the documents it
   completed (or whose chunks came back) through the pool again, submit again; until no job is
   open. SIGINT stops waiting at once; the jobs go on and the next run collects them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from pipeline.errors import FatalError
from pipeline.logsetup import redact
from pipeline.manifest.states import OPEN_BATCH_JOBS, BatchJobState
from pipeline.manifest.writer import AsyncManifest
from pipeline.models import SourceFile
from pipeline.pricing import cost
from pipeline.run.report import Failure
from pipeline.stages.plan import Decision, PlanItem
from pipeline.transport.batch.client import BatchClient
from pipeline.transport.batch.collect import Collector, backoff
from pipeline.transport.batch.submit import BatchSubmitTransport

if TYPE_CHECKING:
    from pipeline.run.runner import Run
    from pipeline.stages.planner import PlanEvent, PlanTally

READY_PAGE = 500  # documents read from the manifest per query


def batch_folder(run: Run) -> Any:
    return run.state / "batch"


async def run_batch(run: Run, events: Iterator[PlanEvent], tally: PlanTally,
                    db: AsyncManifest) -> None:
    transport = run.transport
    assert isinstance(transport, BatchSubmitTransport)
    s = run.s
    output_id = await db.batch_call("batch_output_id")
    transport.bind(db, output_id)
    client = BatchClient(s.service, retry_initial=min(1.0, s.service.retry_initial),
                         retry_max=s.service.retry_max)
    collector = Collector(client, db, output_id, run.run_id, batch_folder(run), s.model,
                          s.batch.timeout_hours, run.log)
    ctx = dataclasses.replace(run.job_context(db), source_notes=lambda rel: _source_note(collector, rel))
    try:
        for name in await db.batch_call("batch_discard_unsealed"):
            (batch_folder(run) / name).unlink(missing_ok=True)
        await collector.submit_waiting()
        await collector.poll_once()
        await _pool(run, _with_jobs(run.planned_documents(events, tally, db), collector, db), ctx, collector)
        await _submit(run, transport, collector, db)
        await _wait(run, transport, collector, db, ctx)
        await db.batch_call("batch_forget_done")
    except FatalError as exc:
        run.abort(exc)
    finally:
        await client.close()
        transport.uploaded_bytes = client.bytes_sent
        await _report(run, transport, collector, db)


def _source_note(collector: Collector, rel: str) -> dict[str, Any]:
    jobs = sorted(collector.jobs_by_path.pop(rel, ()))  # once stored, not needed again
    return {"batch": {"jobs": jobs, "price": "batch (50% of the synchronous price)"}} if jobs else {}


async def _pool(run: Run, items: AsyncIterator[PlanItem], ctx: Any, collector: Collector) -> None:
    """Run documents through the pool; the job ids looked up for those not stored go with it."""
    try:
        await run.process(items, ctx)
    finally:
        collector.jobs_by_path.clear()


async def _with_jobs(items: AsyncIterator[PlanItem], collector: Collector, db: AsyncManifest,
                     group: int = 100) -> AsyncIterator[PlanItem]:
    """The items, with the batch jobs that answered each resumed document looked up (a group
    at a time) just before it goes to the pool, for its `source` block. Only the documents on
    their way through the pool are held, never a map of the whole output: with every answer of
    a 10,000-line job collected before assembly, that map was the run's one per-document cost."""
    buffer: list[PlanItem] = []

    async def flush() -> list[PlanItem]:
        resumed = [i.source.rel for i in buffer if i.decision is not Decision.NEW]
        if resumed:
            collector.jobs_by_path.update(await db.batch_call("batch_jobs_of", resumed))
        out = buffer[:]
        buffer.clear()
        return out

    async with contextlib.aclosing(items) as planned:  # closed with this one (its planner)
        async for item in planned:
            buffer.append(item)
            if len(buffer) >= group:
                for ready in await flush():
                    yield ready
    for ready in await flush():
        yield ready


async def _submit(run: Run, transport: BatchSubmitTransport, collector: Collector,
                  db: AsyncManifest) -> int:
    """Seal this run's files, upload them and start their jobs. A stop by a signal still
    submits what is written: its chunks are recorded as submitted."""
    for part in transport.writer.seal_all():
        if part.requests:
            await db.batch_call("batch_seal", part.part_id, part.requests, part.bytes)
    for name in await db.batch_call("batch_discard_unsealed"):  # parts left with no line
        (batch_folder(run) / name).unlink(missing_ok=True)
    return await collector.submit_waiting()


async def _wait(run: Run, transport: BatchSubmitTransport, collector: Collector,
                db: AsyncManifest, ctx: Any) -> None:
    b = run.s.batch
    interval = b.poll_interval_min
    rounds = 0
    while not run.stopping:
        open_jobs = len(await db.batch_call("batch_jobs", list(OPEN_BATCH_JOBS)))
        if not b.wait:
            return
        if open_jobs:
            done, total = collector.requests_progress()
            run.log.info("batch waiting", jobs=open_jobs, completed=done, total=total,
                         message=f"{done} of {total} requests completed in {open_jobs} jobs")
            if not await _sleep(run, interval):
                return
            still_open, moved = await collector.poll_once()
            interval = backoff(interval, b.poll_interval_min, b.poll_interval_max, moved)
            if still_open == open_jobs and not moved:
                continue
        before = transport.tally.queued
        ready = _ready(run, db)
        if not open_jobs and not await _any_ready(db):
            return
        await _pool(run, _with_jobs(ready, collector, db, READY_PAGE), ctx, collector)
        if transport.tally.queued > before:
            rounds += 1
            if rounds > b.max_rounds:
                run.log.warning("batch: chunks sent again too often; left pending",
                                rounds=rounds)
                await _submit(run, transport, collector, db)
                return
        await _submit(run, transport, collector, db)
        if not open_jobs and transport.tally.queued == before:
            return  # nothing open, nothing sent: what is left cannot move in this run


async def _sleep(run: Run, seconds: float) -> bool:
    """Sleep, waking at once for a stop; False when the run is stopping."""
    end = asyncio.get_running_loop().time() + seconds
    while not run.stopping:
        left = end - asyncio.get_running_loop().time()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, 0.05))
    return False


async def _any_ready(db: AsyncManifest) -> bool:
    return bool(await db.batch_call("batch_ready_documents", "", 1))


async def _ready(run: Run, db: AsyncManifest) -> AsyncIterator[PlanItem]:
    """Pending documents with no chunk awaited, a page of the manifest at a time."""
    after = ""
    while not run.stopping:
        rows = await db.batch_call("batch_ready_documents", after, READY_PAGE)
        if not rows:
            return
        for row in rows:
            path = run.input / row.path if run.input.is_dir() else run.input
            yield PlanItem(SourceFile(path, row.path, row.size, row.mtime_ns,
                                      row.media_type or ""), Decision.RESUME)
        after = rows[-1].path


async def _report(run: Run, transport: BatchSubmitTransport, collector: Collector,
                  db: AsyncManifest) -> None:
    c, t = collector.tally, transport.tally
    for path, category, message in c.failures:
        run.record_failure(Failure(path, category, redact(message)))
    run.report.cost += cost(c.pages_answered, run.price)
    try:
        pending = await db.batch_call("batch_jobs", list(OPEN_BATCH_JOBS))
    except FatalError:
        pending = []
    run.report.batch = {
        "price_per_1000_pages": run.price,
        "requests_queued": t.queued,
        "pages_queued": t.pages_queued,
        "already_submitted": t.already,
        "jobs_created": c.jobs_created,
        "jobs_adopted": c.jobs_adopted,
        "jobs_collected": c.jobs_collected,
        "jobs_ended": dict(c.jobs_ended),
        "answers_collected": c.answers,
        "pages_collected": c.pages_answered,
        "lines_failed": c.lines_failed,
        "chunks_returned_to_pending": c.returned_to_pending,
        # Lines shared with another path's, and answers taken from another path's checkpoint.
        "pages_deduplicated": t.pages_shared + run.report.pages_same_content,
        "jobs_pending": [
            {"job_id": j["job_id"], "state": j["state"], "status": j["status"],
             "completed": j["completed"], "requests": j["requests"]}
            for j in pending if j["state"] != BatchJobState.WRITING
        ],
    }
